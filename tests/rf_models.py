"""Hand-built test models for the receptive-field analysis (issue 9), faithful in layout to the public
libraries they imitate (torchvision, timm, the reference SE and TCN code) but small, and without any
dependency beyond torch.

Each ``Case`` says how to build the model, the input shape, and what is expected: the exact field comes
from the brute-force oracle (tests/bruteforce.py) unless ``closed_form`` gives it by hand; ``whole`` says
which axes must be whole-input; ``local_twin`` builds the same model without its global ops (its
brute-force field is what ``rf.local`` must be); ``error`` is the regex of the expected ``ValueError``
for a refusal. Factories return the model as a user would construct it (train mode): the analysis must
use eval semantics itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------
# library-style helpers (torchvision / timm layouts)
# ----------------------------------------------------------------------------------------------

def stochastic_depth(input: torch.Tensor, p: float, mode: str, training: bool = True) -> torch.Tensor:
    """torchvision.ops.stochastic_depth (wrapped for torch.fx as torchvision does)."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in ["batch", "row"]:
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    size = [input.shape[0]] + [1] * (input.ndim - 1) if mode == "row" else [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device)
    noise = noise.bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return input * noise


torch.fx.wrap("stochastic_depth")


class StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth."""

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, input):
        return stochastic_depth(input, self.p, self.mode, self.training)


def drop_path(x, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True):
    """timm.layers.drop_path."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
    if keep_prob > 0.0 and scale_by_keep:
        random_tensor.div_(keep_prob)
    return x * random_tensor


class DropPath(nn.Module):
    """timm.layers.DropPath."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)


class Permute(nn.Module):
    """torchvision.ops.misc.Permute."""

    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return torch.permute(x, self.dims)


class LayerNorm2d(nn.LayerNorm):
    """timm / torchvision LayerNorm2d: LayerNorm over channels of an NCHW tensor, via permutes."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        x = x.permute(0, 3, 1, 2)
        return x


class Mlp(nn.Module):
    """timm.layers.Mlp on the last (channel) dim."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(0.1)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(0.1)

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


# ----------------------------------------------------------------------------------------------
# ResNet, torchvision layout: one shared self.relu per block, called 2 or 3 times
# ----------------------------------------------------------------------------------------------

def conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv3(out)
        out = self.bn3(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class ResNet(nn.Module):
    """torchvision.models.ResNet, small: maxpool stem, stages of ``block``, zero-init residual gamma."""

    def __init__(self, block, layers, widths=(8, 16, 32, 64), num_classes=10, features_only=False,
                 device=None):
        super().__init__()
        self.features_only = features_only
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, n in enumerate(layers):
            self.add_module(f"layer{i + 1}", self._make_layer(block, widths[i], n, stride=1 if i == 0 else 2))
        self.nstages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.constant_(m.bn3.weight, 0)      # zero_init_residual=True
            elif isinstance(m, BasicBlock):
                nn.init.constant_(m.bn2.weight, 0)
        if device is not None:
            self.to(device)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        for i in range(self.nstages):
            x = getattr(self, f"layer{i + 1}")(x)
        if self.features_only:
            return x
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return x


# ----------------------------------------------------------------------------------------------
# ConvNeXt: timm-style blocks (x.permute, gamma, DropPath) and torchvision-style (Permute module,
# layer_scale, StochasticDepth); LayerNorm2d stem and downsampling
# ----------------------------------------------------------------------------------------------

class ConvNeXtBlockTimm(nn.Module):
    def __init__(self, dim, ls_init_value=1e-6, drop_path=0.1):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.gamma = nn.Parameter(ls_init_value * torch.ones(dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        shortcut = x
        x = self.conv_dw(x)
        x = x.permute(0, 2, 3, 1)
        x = self.norm(x)
        x = self.mlp(x)
        x = x.mul(self.gamma)
        x = x.permute(0, 3, 1, 2)
        x = self.drop_path(x) + shortcut
        return x


class CNBlock(nn.Module):
    """torchvision.models.convnext.CNBlock."""

    def __init__(self, dim, layer_scale=1e-6, stochastic_depth_prob=0.1):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
            Permute([0, 2, 3, 1]),
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, dim),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")

    def forward(self, input):
        result = self.layer_scale * self.block(input)
        result = self.stochastic_depth(result)
        result += input
        return result


class ConvNeXt(nn.Module):
    def __init__(self, dims=(8, 16), num_classes=10, features_only=False):
        super().__init__()
        self.features_only = features_only
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0], eps=1e-6))
        self.stage1 = nn.Sequential(ConvNeXtBlockTimm(dims[0]), ConvNeXtBlockTimm(dims[0]))
        self.downsample = nn.Sequential(LayerNorm2d(dims[0], eps=1e-6), nn.Conv2d(dims[0], dims[1], 2, stride=2))
        self.stage2 = nn.Sequential(CNBlock(dims[1]))
        self.norm_pre = nn.Identity()
        self.head_norm = LayerNorm2d(dims[1], eps=1e-6)
        self.fc = nn.Linear(dims[1], num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.stage1(x)
        x = self.downsample(x)
        x = self.stage2(x)
        x = self.norm_pre(x)
        if self.features_only:
            return x
        x = x.mean((2, 3), keepdim=True)
        x = self.head_norm(x)
        x = x.flatten(1)
        return self.fc(x)


# ----------------------------------------------------------------------------------------------
# ShuffleNetV2 (torchvision InvertedResidual: chunk, cat, channel shuffle by view/transpose/view)
# ----------------------------------------------------------------------------------------------

def channel_shuffle(x, groups: int):
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    x = x.view(batchsize, num_channels, height, width)
    return x


def _dw(i, o, k, s, p):
    return nn.Conv2d(i, o, k, s, p, bias=False, groups=i)


class ShuffleUnit(nn.Module):
    def __init__(self, inp, oup, stride):
        super().__init__()
        self.stride = stride
        branch_features = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(_dw(inp, inp, 3, stride, 1), nn.BatchNorm2d(inp),
                                         nn.Conv2d(inp, branch_features, 1, bias=False),
                                         nn.BatchNorm2d(branch_features), nn.ReLU(inplace=True))
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else branch_features, branch_features, 1, bias=False),
            nn.BatchNorm2d(branch_features), nn.ReLU(inplace=True),
            _dw(branch_features, branch_features, 3, stride, 1), nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, 1, bias=False), nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        out = channel_shuffle(out, 2)
        return out


class ShuffleNetV2(nn.Module):
    def __init__(self, channels=(8, 16, 32), num_classes=10, features_only=False):
        super().__init__()
        self.features_only = features_only
        self.conv1 = nn.Sequential(nn.Conv2d(3, channels[0], 3, 2, 1, bias=False), nn.BatchNorm2d(channels[0]),
                                   nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.stage2 = nn.Sequential(ShuffleUnit(channels[0], channels[1], 2), ShuffleUnit(channels[1], channels[1], 1))
        self.stage3 = nn.Sequential(ShuffleUnit(channels[1], channels[2], 2), ShuffleUnit(channels[2], channels[2], 1))
        self.conv5 = nn.Sequential(nn.Conv2d(channels[2], 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.conv1(x)
        x = self.maxpool(x)
        x = self.stage2(x)
        x = self.stage3(x)
        x = self.conv5(x)
        if self.features_only:
            return x
        x = x.mean([2, 3])
        return self.fc(x)


# ----------------------------------------------------------------------------------------------
# EfficientNet / MobileNetV3 blocks: SE gate (adaptive pool + 1x1 convs + sigmoid), stochastic depth
# ----------------------------------------------------------------------------------------------

class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation."""

    def __init__(self, input_channels, squeeze_channels, activation=nn.ReLU, scale_activation=nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def _scale(self, input):
        scale = self.avgpool(input)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        return self.scale_activation(scale)

    def forward(self, input):
        scale = self._scale(input)
        return scale * input


def _cba(i, o, k, s, groups=1, act=nn.SiLU):
    layers = [nn.Conv2d(i, o, k, s, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(o)]
    if act is not None:
        layers.append(act(inplace=True) if act in (nn.ReLU, nn.SiLU, nn.Hardswish) else act())
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """torchvision.models.efficientnet.MBConv (and MobileNetV3's InvertedResidual with ``act``/``gate``)."""

    def __init__(self, cin, cout, k, stride, expand, se=True, act=nn.SiLU, gate=nn.Sigmoid, sd_prob=0.1):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        hid = cin * expand
        layers = []
        if hid != cin:
            layers.append(_cba(cin, hid, 1, 1, act=act))
        layers.append(_cba(hid, hid, k, stride, groups=hid, act=act))
        if se:
            sq = max(1, cin // 4)
            layers.append(SqueezeExcitation(hid, sq, activation=nn.SiLU if act is nn.SiLU else nn.ReLU,
                                            scale_activation=gate))
        layers.append(_cba(hid, cout, 1, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(sd_prob, "row")

    def forward(self, input):
        result = self.block(input)
        if self.use_res_connect:
            result = self.stochastic_depth(result)
            result += input
        return result


class EfficientNet(nn.Module):
    def __init__(self, se=True, num_classes=10, features_only=False, mobilenetv3=False):
        super().__init__()
        self.features_only = features_only
        act, gate = (nn.Hardswish, nn.Hardsigmoid) if mobilenetv3 else (nn.SiLU, nn.Sigmoid)
        k2 = 5 if mobilenetv3 else 3
        self.features = nn.Sequential(
            _cba(3, 8, 3, 2, act=act),
            MBConv(8, 8, 3, 1, 1, se=se, act=act, gate=gate),
            MBConv(8, 12, k2, 2, 4, se=se, act=act, gate=gate),
            MBConv(12, 12, k2, 1, 4, se=se, act=act, gate=gate),
            _cba(12, 24, 1, 1, act=act),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=0.2, inplace=True), nn.Linear(24, num_classes))

    def forward(self, x):
        x = self.features(x)
        if self.features_only:
            return x
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


class SELayer(nn.Module):
    """The reference squeeze-excitation layer (Hu et al. 2018; senet.pytorch): view -> Linear -> view."""

    def __init__(self, channel, reduction=4):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channel, channel // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(channel // reduction, channel, bias=False), nn.Sigmoid())

    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


class SENet(nn.Module):
    def __init__(self, se=True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.se = SELayer(8) if se else nn.Identity()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.se(self.relu(self.bn1(self.conv1(x)))))


# ----------------------------------------------------------------------------------------------
# ViT: patch embedding, cls token, pos embed, attention (nn.MultiheadAttention or hand-written qkv)
# ----------------------------------------------------------------------------------------------

class PatchEmbed(nn.Module):
    def __init__(self, patch=8, in_chans=3, dim=16):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)       # (B, N, D)


class Attention(nn.Module):
    """timm.models.vision_transformer.Attention (hand-written: qkv Linear, reshape, permute, softmax)."""

    def __init__(self, dim, num_heads=2):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class SdpaAttention(Attention):
    """timm's fused path: F.scaled_dot_product_attention."""

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Block(nn.Module):
    """Pre-norm transformer block; ``attn``: 'mha' (nn.MultiheadAttention), 'qkv', 'sdpa' or None (no
    attention: the local twin)."""

    def __init__(self, dim, attn="qkv", heads=2):
        super().__init__()
        self.kind = attn
        self.norm1 = nn.LayerNorm(dim)
        if attn == "mha":
            self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        elif attn == "qkv":
            self.attn = Attention(dim, heads)
        elif attn == "sdpa":
            self.attn = SdpaAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 2 * dim)
        self.drop_path = DropPath(0.1)

    def forward(self, x):
        if self.kind == "mha":
            y = self.norm1(x)
            x = x + self.drop_path(self.attn(y, y, y, need_weights=False)[0])
        elif self.kind is not None:
            x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class ViT(nn.Module):
    """ViT classifier reading the cls token (``seg=False``) or a segmentation ViT that drops the cls
    token and reshapes the tokens back to a grid (``seg=True``)."""

    def __init__(self, attn="qkv", img=32, patch=8, dim=16, depth=1, num_classes=5, seg=False, cls=True):
        super().__init__()
        self.seg, self.cls, self.patch = seg, cls, patch
        self.grid = img // patch
        self.patch_embed = PatchEmbed(patch, 3, dim)
        n = self.grid ** 2 + (1 if cls else 0)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls else None
        self.pos_embed = nn.Parameter(torch.randn(1, n, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, attn) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        if seg:
            self.head = nn.Conv2d(dim, num_classes, 1)
        else:
            self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        B = x.shape[0]
        x = self.patch_embed(x)
        if self.cls:
            x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        x = x + self.pos_embed
        x = self.blocks(x)
        x = self.norm(x)
        if not self.seg:
            return self.head(x[:, 0])
        if self.cls:
            x = x[:, 1:]
        x = x.transpose(1, 2).reshape(B, -1, self.grid, self.grid)
        x = self.head(x)
        return F.interpolate(x, scale_factor=self.patch, mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------------------------
# Swin: window partition/reverse by view/permute, window attention with relative position bias,
# shifted windows by torch.roll with the -100 attention mask
# ----------------------------------------------------------------------------------------------

def window_partition(x, window_size: int):
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size * window_size, C)
    return windows


def window_reverse(windows, window_size: int, H: int, W: int):
    C = windows.shape[-1]
    x = windows.view(-1, H // window_size, W // window_size, window_size, window_size, C)
    x = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, H, W, C)
    return x


class WindowAttention(nn.Module):
    def __init__(self, dim, window_size, num_heads=2):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        ws = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * ws - 1) + rel[..., 1], persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x, mask=None):
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, -1)
        attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        if mask is not None:
            num_win = mask.shape[0]
            attn = attn.view(-1, num_win, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.softmax(attn)
        x = (attn @ v).transpose(1, 2).reshape(B_, N, -1)
        return self.proj(x)


class SwinBlock(nn.Module):
    def __init__(self, dim, resolution, window_size=4, shift_size=0):
        super().__init__()
        self.ws, self.shift = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size)
        self.drop_path = DropPath(0.1)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 2 * dim)
        H = W = resolution
        if shift_size:
            img_mask = torch.zeros((1, H, W, 1))
            cnt = 0
            for h in (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None)):
                for w in (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None)):
                    img_mask[:, h, w, :] = cnt
                    cnt += 1
            mw = window_partition(img_mask, window_size).squeeze(-1)
            attn_mask = mw.unsqueeze(1) - mw.unsqueeze(2)
            attn_mask = attn_mask.masked_fill(attn_mask != 0, float(-100.0)).masked_fill(attn_mask == 0, float(0.0))
        else:
            attn_mask = None
        self.register_buffer("attn_mask", attn_mask, persistent=False)

    def forward(self, x):                     # (B, H, W, C)
        B, H, W, C = x.shape
        shortcut = x
        x = self.norm1(x)
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        win = window_partition(x, self.ws)
        win = self.attn(win, mask=self.attn_mask)
        x = window_reverse(win, self.ws, H, W)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + self.drop_path(x)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class Swin(nn.Module):
    """Patch embed 4x4 (channels-last tokens), W-MSA block, optional SW-MSA block; (B, H, W, C) output."""

    def __init__(self, img=32, dim=16, window_size=4, shifted=False):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 4, 4)
        self.norm = nn.LayerNorm(dim)
        res = img // 4
        blocks = [SwinBlock(dim, res, window_size, 0)]
        if shifted:
            blocks.append(SwinBlock(dim, res, window_size, window_size // 2))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        x = self.patch_embed(x).permute(0, 2, 3, 1)
        x = self.norm(x)
        return self.blocks(x)


# ----------------------------------------------------------------------------------------------
# MobileViT (v1, timm layout): local conv, unfold to patches by reshape/transpose, transformer over
# patches, fold back, fuse with the input
# ----------------------------------------------------------------------------------------------

class MobileViTBlock(nn.Module):
    def __init__(self, cin, dim=16, patch=2, attn="qkv"):
        super().__init__()
        self.patch = patch
        self.conv_kxk = _cba(cin, cin, 3, 1)
        self.conv_1x1 = nn.Conv2d(cin, dim, 1, bias=False)
        self.transformer = nn.Sequential(Block(dim, attn))
        self.norm = nn.LayerNorm(dim)
        self.conv_proj = _cba(dim, cin, 1, 1)
        self.conv_fusion = _cba(2 * cin, cin, 3, 1)

    def forward(self, x):
        shortcut = x
        x = self.conv_kxk(x)
        x = self.conv_1x1(x)
        patch_h = patch_w = self.patch
        B, C, H, W = x.shape
        num_patch_h, num_patch_w = H // patch_h, W // patch_w
        num_patches = num_patch_h * num_patch_w
        patch_area = patch_h * patch_w
        # unfold: (B, C, H, W) -> (B * P, N, C)
        x = x.reshape(B * C * num_patch_h, patch_h, num_patch_w, patch_w).transpose(1, 2)
        x = x.reshape(B, C, num_patches, patch_area).transpose(1, 3).reshape(B * patch_area, num_patches, -1)
        x = self.transformer(x)
        x = self.norm(x)
        # fold: (B * P, N, C) -> (B, C, H, W)
        x = x.contiguous().view(B, patch_area, num_patches, -1)
        x = x.transpose(1, 3).reshape(B * C * num_patch_h, num_patch_w, patch_h, patch_w)
        x = x.transpose(1, 2).reshape(B, C, num_patch_h * patch_h, num_patch_w * patch_w)
        x = self.conv_proj(x)
        x = self.conv_fusion(torch.cat((shortcut, x), dim=1))
        return x


class MobileViT(nn.Module):
    def __init__(self, attn="qkv"):
        super().__init__()
        self.stem = _cba(3, 8, 3, 2)
        self.block = MobileViTBlock(8, 16, 2, attn)
        self.head = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


class _MeanGate(nn.Module):
    """A squeeze-excitation gate: ``x * sigmoid(fc(mean over positions))``."""

    def __init__(self, c):
        super().__init__()
        self.fc = nn.Conv1d(c, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc(x.mean(2, keepdim=True)))


class _PyramidPool(nn.Module):
    """PSPNet's pooling branch next to the feature map: global pool, 1x1 conv, upsample, concatenate."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)
        self.fuse = nn.Conv2d(2 * c, c, 1)

    def forward(self, x):
        g = F.interpolate(self.conv(F.adaptive_avg_pool2d(x, 1)), size=x.shape[2:], mode="bilinear",
                          align_corners=False)
        return self.fuse(torch.cat([x, g], 1))


class GMean(nn.Module):
    def forward(self, x):
        return x.mean(2)


class _CatGrids(nn.Module):
    """Two branches on different grids (strides 3 and 4 through two convs) concatenated, then a mean."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv1d(1, 1, 1, 3)
        self.b = nn.Sequential(nn.Conv1d(1, 1, 2, 2, 1), nn.Conv1d(1, 1, 1, 2))

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], 1).mean(2)


def mobilevit_valid_stem(device=None):
    """MobileViT behind an unpadded stride-2 stem: on 34 pixels the stem reads 0..32, never 33."""
    m = MobileViT()
    m.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2), nn.BatchNorm2d(8), nn.SiLU())
    return m


# ----------------------------------------------------------------------------------------------
# Normalisation over positions: GroupNorm, functional group_norm, InstanceNorm, LayerNorm over
# (C, H, W) and over W only
# ----------------------------------------------------------------------------------------------

class NormNet(nn.Module):
    def __init__(self, norm="group", width=16):
        super().__init__()
        self.norm_kind = norm
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        if norm == "group":
            self.norm = nn.GroupNorm(2, 8)
        elif norm == "group1":
            self.norm = nn.GroupNorm(1, 8)
        elif norm == "instance":
            self.norm = nn.InstanceNorm2d(8, affine=True)
        elif norm == "layer_chw":
            self.norm = nn.LayerNorm([8, width, width])
        elif norm == "layer_w":
            self.norm = nn.LayerNorm(width)               # over the last axis (W) of NCHW only
        elif norm == "functional_group":
            self.gn_weight = nn.Parameter(torch.ones(8))
            self.gn_bias = nn.Parameter(torch.zeros(8))
        elif norm == "none":
            self.norm = nn.Identity()
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        x = self.conv1(x)
        if self.norm_kind == "functional_group":
            x = F.group_norm(x, 4, self.gn_weight, self.gn_bias)
        else:
            x = self.norm(x)
        return self.conv2(self.act(x))


# ----------------------------------------------------------------------------------------------
# U-Net (skip cat, ConvTranspose / nearest / bilinear upsampling), ASPP / DeepLab head
# ----------------------------------------------------------------------------------------------

class DoubleConv(nn.Sequential):
    def __init__(self, i, o):
        super().__init__(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                         nn.Conv2d(o, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))


class UNet(nn.Module):
    def __init__(self, up="transpose"):
        super().__init__()
        self.up_kind = up
        self.inc = DoubleConv(3, 8)
        self.down1 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(8, 16))
        self.down2 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(16, 16))
        if up == "transpose":
            self.up1 = nn.ConvTranspose2d(16, 16, kernel_size=2, stride=2)
            self.up2 = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv_up1 = DoubleConv(32, 8)
        self.conv_up2 = DoubleConv(16, 8)
        self.outc = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        if self.up_kind == "transpose":
            u = self.up1(x3)
        else:
            u = F.interpolate(x3, scale_factor=2, mode="bilinear", align_corners=False)
        u = self.conv_up1(torch.cat([x2, u], dim=1))
        if self.up_kind == "transpose":
            u = self.up2(u)
        else:
            u = F.interpolate(u, size=x1.shape[-2:], mode="bilinear", align_corners=False)
        u = self.conv_up2(torch.cat([x1, u], dim=1))
        return self.outc(u)


class ASPPConv(nn.Sequential):
    def __init__(self, i, o, dilation):
        super().__init__(nn.Conv2d(i, o, 3, padding=dilation, dilation=dilation, bias=False), nn.BatchNorm2d(o),
                         nn.ReLU())


class ASPPPooling(nn.Sequential):
    """torchvision.models.segmentation.deeplabv3.ASPPPooling."""

    def __init__(self, i, o):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(i, o, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

    def forward(self, x):
        size = x.shape[-2:]
        for mod in self:
            x = mod(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    def __init__(self, i, rates=(2, 4), o=8, pooling=True):
        super().__init__()
        mods = [nn.Sequential(nn.Conv2d(i, o, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())]
        mods += [ASPPConv(i, o, r) for r in rates]
        if pooling:
            mods.append(ASPPPooling(i, o))
        self.convs = nn.ModuleList(mods)
        self.project = nn.Sequential(nn.Conv2d(len(mods) * o, o, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(),
                                     nn.Dropout(0.5))

    def forward(self, x):
        res = [conv(x) for conv in self.convs]
        return self.project(torch.cat(res, dim=1))


class DeepLab(nn.Module):
    def __init__(self, pooling=True):
        super().__init__()
        self.backbone = nn.Sequential(_cba(3, 8, 3, 2, act=nn.ReLU), _cba(8, 8, 3, 2, act=nn.ReLU))
        self.aspp = ASPP(8, pooling=pooling)
        self.head = nn.Sequential(_cba(8, 8, 3, 1, act=nn.ReLU), nn.Conv2d(8, 3, 1))

    def forward(self, x):
        size = x.shape[-2:]
        y = self.head(self.aspp(self.backbone(x)))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------------------------
# space-to-depth stems and depth-to-space heads
# ----------------------------------------------------------------------------------------------

class PixelUnshuffleStem(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(12, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(F.pixel_unshuffle(x, 2))))


class Focus(nn.Module):
    """YOLOv5 Focus: space-to-depth by four strided slices concatenated on channels, then a conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(12, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.SiLU())

    def forward(self, x):
        return self.conv(torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1))


class PixelShuffleHead(nn.Module):
    """ESPCN-style: conv, conv to r^2 C channels, nn.PixelShuffle(r), conv."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 4 * 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.conv3 = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x):
        return self.conv3(self.shuffle(self.conv2(F.relu(self.conv1(x)))))


# ----------------------------------------------------------------------------------------------
# 1-D: dilated causal TCNs (left pad by F.pad; the reference code's pad-then-chomp), GRU/LSTM heads
# ----------------------------------------------------------------------------------------------

class CausalBlock(nn.Module):
    def __init__(self, i, o, k, d):
        super().__init__()
        self.pad = (k - 1) * d
        self.conv1 = nn.Conv1d(i, o, k, dilation=d)
        self.conv2 = nn.Conv1d(o, o, k, dilation=d)
        self.down = nn.Conv1d(i, o, 1) if i != o else None
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.relu(self.conv1(F.pad(x, (self.pad, 0))))
        y = self.relu(self.conv2(F.pad(y, (self.pad, 0))))
        res = x if self.down is None else self.down(x)
        return self.relu(y + res)


class Chomp1d(nn.Module):
    def __init__(self, chomp_size):
        super().__init__()
        self.chomp_size = chomp_size

    def forward(self, x):
        return x[:, :, :-self.chomp_size].contiguous()


class TemporalBlock(nn.Module):
    """Bai et al. 2018 (locuslab/TCN): Conv1d(padding=(k-1)d) then Chomp1d, twice, plus a residual."""

    def __init__(self, n_inputs, n_outputs, kernel_size, stride, dilation, padding, dropout=0.2):
        super().__init__()
        self.conv1 = nn.Conv1d(n_inputs, n_outputs, kernel_size, stride=stride, padding=padding, dilation=dilation)
        self.chomp1 = Chomp1d(padding)
        self.relu1 = nn.ReLU()
        self.dropout1 = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(n_outputs, n_outputs, kernel_size, stride=stride, padding=padding, dilation=dilation)
        self.chomp2 = Chomp1d(padding)
        self.relu2 = nn.ReLU()
        self.dropout2 = nn.Dropout(dropout)
        self.net = nn.Sequential(self.conv1, self.chomp1, self.relu1, self.dropout1,
                                 self.conv2, self.chomp2, self.relu2, self.dropout2)
        self.downsample = nn.Conv1d(n_inputs, n_outputs, 1) if n_inputs != n_outputs else None
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.net(x)
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(out + res)


class TCN(nn.Module):
    def __init__(self, kind="pad", dilations=(1, 2, 4, 8), k=3, cin=2, width=8):
        super().__init__()
        layers = []
        for i, d in enumerate(dilations):
            c = cin if i == 0 else width
            if kind == "pad":
                layers.append(CausalBlock(c, width, k, d))
            else:
                layers.append(TemporalBlock(c, width, k, 1, d, (k - 1) * d))
        self.network = nn.Sequential(*layers)

    def forward(self, x):
        return self.network(x)


class RecurrentHead(nn.Module):
    def __init__(self, kind="gru"):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3, padding=1)
        self.rnn = nn.GRU(8, 8, batch_first=True) if kind == "gru" else nn.LSTM(8, 8, batch_first=True)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.conv(x).permute(0, 2, 1)          # (B, T, C)
        out, _ = self.rnn(x)
        return self.fc(out)


# ----------------------------------------------------------------------------------------------
# several inputs, meta device, functional ops, one module called on two inputs, tuple outputs
# ----------------------------------------------------------------------------------------------

class TwoInputs(nn.Module):
    def __init__(self, fuse="add"):
        super().__init__()
        self.fuse = fuse
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 5, padding=2)
        self.out = nn.Conv2d(16 if fuse == "cat" else 8, 4, 3, padding=1)

    def forward(self, x1, x2):
        a, b = self.a(x1), self.b(x2)
        y = a + b if self.fuse == "add" else torch.cat([a, b], dim=1)
        return self.out(F.relu(y))


def meta_net(device=None):
    with torch.device(device or "cpu"):
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Conv2d(8, 4, 3, padding=1))


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3)
        self.w2 = nn.Parameter(torch.randn(8, 8, 3, 3) * 0.3)
        self.b2 = nn.Parameter(torch.zeros(8))

    def forward(self, x):
        x = F.conv2d(x, self.w1, padding=2, dilation=2)
        x = F.relu(x)
        x = F.max_pool2d(x, 3, 2, 1)
        x = F.conv2d(x, self.w2, self.b2, stride=1, padding=1)
        return F.avg_pool2d(x, 2)


class SharedTwice(nn.Module):
    """One conv applied to the input and to its max-pooled copy (names ``conv`` and ``conv_1``)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        a = self.conv(x)
        b = self.conv(self.pool(x))
        return a + F.interpolate(b, scale_factor=2, mode="nearest")


class ActTwice(nn.Module):
    """The issue's repro: c1(k3) -> act -> c2(k3) -> act; receptive_fields must give 3, 3, 5, 5."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(1, 4, 3)
        self.act = nn.ReLU()
        self.c2 = nn.Conv1d(4, 4, 3)

    def forward(self, x):
        return self.act(self.c2(self.act(self.c1(x))))


class TwoScales(nn.Module):
    """Returns a tuple (stride-2 map, stride-4 map)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.s1 = nn.Conv2d(8, 8, 3, padding=1)
        self.s2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)

    def forward(self, x):
        a = self.s1(F.relu(self.stem(x)))
        b = self.s2(F.relu(a))
        return a, b


class GridSample(nn.Module):
    """An op whose dependence is data-dependent (a sampling grid): must be refused by name."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        theta = torch.tensor([[[0.9, 0.1, 0.0], [-0.1, 0.9, 0.0]]])
        self.register_buffer("grid", F.affine_grid(theta, (1, 4, 16, 16), align_corners=False))
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        x = self.conv(x)
        x = F.grid_sample(x, self.grid, align_corners=False)
        return self.out(x)


class DataDependent(nn.Module):
    """Python control flow on tensor values: torch.fx cannot trace it (the analysis either handles it
    exactly or refuses by name; it must never guess)."""

    def __init__(self, rnn=False):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv1d(4, 4, 3, padding=2, dilation=2)
        self.rnn = nn.GRU(4, 4, batch_first=True) if rnn else None

    def forward(self, x):
        x = self.conv1(x)
        if x.sum() > 1e9:           # never true, but fx cannot know
            x = x * 2
        x = self.conv2(x)
        if self.rnn is not None:
            x, _ = self.rnn(x.transpose(1, 2))
            x = x.transpose(1, 2)
        return x


# ----------------------------------------------------------------------------------------------
# the cases
# ----------------------------------------------------------------------------------------------

@dataclass
class Case:
    """One test model. ``factory(device=None)`` builds it; ``input_shape`` is (N, C, *spatial) or a list of
    shapes (several inputs: the field is the union over the inputs).

    ``whole``: expected ``whole_input`` per axis (None: no axis whole);
    ``error``: regex of the expected ValueError (a refusal; nothing else is checked);
    ``exact_or_refused``: either the field matches the oracle or a ValueError naming a node is raised;
    ``closed_form``: expected ``size``/``jump``/``start`` (and ``span``: {index: per-axis (lo, hi)});
    ``local_twin``: factory of the same model without its global ops (``rf.local`` must match its
    field); ``local_none``: no local path reaches the output (``rf.local is None``);
    ``output``/``spatial_dims``: which output tensor and which of its dims are spatial (oracle);
    ``positions``: output positions to check (default: corners and centre);
    ``meta``: build on torch.device('meta') for the analysis (the oracle uses a CPU twin);
    ``at``: [(at, oracle submodule/node)] checks of ``receptive_field(..., at=...)``;
    ``names``: {regex: count} of ``receptive_fields`` keys;
    ``slow``: keep out of the default run;
    ``glob``: expected ``global_at`` set per axis when it differs from ``whole`` (a global op whose
    input reads only part of the input: the field is one interval for every output, not the whole).
    """

    name: str
    factory: Callable[..., nn.Module]
    input_shape: Any
    whole: tuple | None = None
    error: str | None = None
    exact_or_refused: bool = False
    closed_form: dict | None = None
    local_twin: Callable[..., nn.Module] | None = None
    local_none: bool = False
    output: Any = None
    spatial_dims: tuple | None = None
    positions: list | None = None
    meta: bool = False
    at: list = field(default_factory=list)
    names: dict | None = None
    slow: bool = False
    glob: tuple | None = None

    @property
    def ndim(self) -> int:
        s = self.input_shape if isinstance(self.input_shape[0], int) else self.input_shape[0]
        return len(s) - 2


BOTH = (True, True)

CASES = [
    # --- purely local, closed form -------------------------------------------------------------
    Case("context_module", lambda device=None: nn.Sequential(
        *[nn.Conv2d(2, 2, 3, padding=d, dilation=d) for d in (1, 1, 2, 4, 8, 16, 1)], nn.Conv2d(2, 2, 1)),
        (1, 2, 80, 80), closed_form={"size": (67, 67), "jump": (1, 1), "start": (0, 0)}),
    Case("strided_pool_1d", lambda device=None: nn.Sequential(
        nn.Conv1d(1, 4, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(4, 4, 3, padding=2, dilation=2)),
        (1, 1, 64), closed_form={"size": (23,), "jump": (4,), "start": (1,)}),
    Case("conv3d_anisotropic", lambda device=None: nn.Sequential(
        nn.Conv3d(1, 2, (3, 1, 5), dilation=(1, 2, 1), padding=(1, 0, 2)),
        nn.Conv3d(2, 2, (1, 3, 3), dilation=(1, 2, 1))),
        (1, 1, 6, 10, 12), closed_form={"size": (3, 5, 7), "jump": (1, 1, 1), "start": (0, 2, 1)}),
    Case("separable_1x7_7x1", lambda device=None: nn.Sequential(
        nn.Conv2d(3, 4, (1, 7), padding=(0, 3)), nn.Conv2d(4, 4, (7, 1), padding=(3, 0))),
        (1, 3, 24, 24), closed_form={"size": (7, 7), "jump": (1, 1), "start": (0, 0)}),
    Case("conv_transpose", lambda device=None: nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1),
        nn.Conv2d(4, 2, 3, padding=1)), (1, 3, 32, 32)),
    Case("functional_ops", lambda device=None: Functional(), (1, 3, 64, 64),
         closed_form={"size": (13, 13), "jump": (4, 4), "start": (1, 1)}),
    Case("meta_device", meta_net, (1, 3, 32, 32), meta=True,
         closed_form={"size": (17, 17), "jump": (4, 4), "start": (1, 1)}),
    Case("shared_conv_two_inputs", lambda device=None: SharedTwice(), (1, 3, 32, 32),
         names={r"^conv$": 1, r"^conv_1$": 1}),
    Case("act_called_twice", lambda device=None: ActTwice(), (1, 1, 16),
         names={r"^act$": 1, r"^act_1$": 1}, closed_form={"size": (5,), "jump": (1,), "start": (2,)}),
    Case("tuple_output", lambda device=None: TwoScales(), (1, 3, 32, 32), output=0,
         closed_form={"size": (7, 7), "jump": (2, 2), "start": (0, 0)},
         at=[("s2", 1)]),
    Case("two_inputs_add", lambda device=None: TwoInputs("add"), [(1, 3, 32, 32), (1, 3, 32, 32)],
         closed_form={"size": (7, 7), "jump": (1, 1), "start": (0, 0)}),
    Case("two_inputs_cat", lambda device=None: TwoInputs("cat"), [(1, 3, 32, 32), (1, 3, 32, 32)],
         closed_form={"size": (7, 7), "jump": (1, 1), "start": (0, 0)}),
    Case("tcn_causal_pad", lambda device=None: TCN("pad"), (1, 2, 128),
         closed_form={"size": (61,), "jump": (1,), "start": (-30,), "span": {(70,): ((10, 70),), (0,): ((-60, 0),)}}),
    Case("tcn_chomp", lambda device=None: TCN("chomp", dilations=(1, 2, 4)), (1, 2, 64),
         closed_form={"size": (29,), "jump": (1,), "start": (-14,), "span": {(40,): ((12, 40),)}}),
    # --- torchvision / timm layouts -------------------------------------------------------------
    Case("resnet_basic_features", lambda device=None: ResNet(BasicBlock, [2, 2], features_only=True),
         (1, 3, 128, 128), names={r"^layer1[._]0[._]relu(_\d+)?$": 2, r"^layer1[._]1[._]relu(_\d+)?$": 2},
         at=[("layer1", "layer1"), ("layer1.0", "layer1.0"), ("maxpool", "maxpool")]),
    Case("resnet_basic", lambda device=None: ResNet(BasicBlock, [2, 2]), (1, 3, 64, 64), whole=BOTH,
         at=[("layer2", "layer2")]),
    Case("resnet_bottleneck_features", lambda device=None: ResNet(Bottleneck, [1, 2, 1], widths=(4, 8, 8),
                                                                  features_only=True),
         (1, 3, 128, 128), names={r"^layer2[._]1[._]relu(_\d+)?$": 3}, at=[("layer2", "layer2")]),
    Case("convnext_features", lambda device=None: ConvNeXt(features_only=True), (1, 3, 160, 160),
         names={r"^permute(_\d+)?$": 10, r"^stochastic_depth$": 1}, at=[("stage1", "stage1")]),
    Case("convnext", lambda device=None: ConvNeXt(), (1, 3, 64, 64), whole=BOTH),
    Case("shufflenet_v2_features", lambda device=None: ShuffleNetV2(features_only=True), (1, 3, 128, 128),
         names={r"^view(_\d+)?$": 8, r"^transpose(_\d+)?$": 4, r"^cat(_\d+)?$": 4}, at=[("stage2", "stage2")]),
    Case("efficientnet_features", lambda device=None: EfficientNet(features_only=True), (1, 3, 64, 64),
         whole=BOTH, local_twin=lambda device=None: EfficientNet(se=False, features_only=True)),
    Case("efficientnet_no_se_features", lambda device=None: EfficientNet(se=False, features_only=True),
         (1, 3, 64, 64)),
    Case("mobilenetv3_features", lambda device=None: EfficientNet(features_only=True, mobilenetv3=True),
         (1, 3, 64, 64), whole=BOTH,
         local_twin=lambda device=None: EfficientNet(se=False, features_only=True, mobilenetv3=True)),
    Case("efficientnet", lambda device=None: EfficientNet(), (1, 3, 64, 64), whole=BOTH),
    Case("reference_se_layer", lambda device=None: SENet(), (1, 3, 32, 32), whole=BOTH,
         local_twin=lambda device=None: SENet(se=False)),
    Case("vit_mha_cls", lambda device=None: ViT("mha"), (1, 3, 32, 32), whole=BOTH, local_none=True),
    Case("vit_qkv_cls", lambda device=None: ViT("qkv"), (1, 3, 32, 32), whole=BOTH, local_none=True),
    Case("vit_sdpa_cls", lambda device=None: ViT("sdpa"), (1, 3, 32, 32), whole=BOTH, local_none=True),
    Case("vit_seg_drop_cls", lambda device=None: ViT("qkv", seg=True), (1, 3, 32, 32), whole=BOTH,
         local_twin=lambda device=None: ViT(None, seg=True)),
    Case("vit_seg_no_attention", lambda device=None: ViT(None, seg=True), (1, 3, 32, 32)),
    Case("vit_seg_mha_no_cls", lambda device=None: ViT("mha", seg=True, cls=False), (1, 3, 32, 32), whole=BOTH,
         local_twin=lambda device=None: ViT(None, seg=True, cls=False)),
    Case("swin_window", lambda device=None: Swin(img=64), (1, 3, 64, 64), spatial_dims=(1, 2),
         closed_form={"span": {(5, 9): ((16, 31), (32, 47)), (0, 15): ((0, 15), (48, 63))}}),
    Case("swin_shifted", lambda device=None: Swin(img=64, shifted=True), (1, 3, 64, 64), spatial_dims=(1, 2),
         positions=[(0, 0), (5, 9), (15, 15), (6, 1)]),
    Case("mobilevit_block", lambda device=None: MobileViT(), (1, 3, 32, 32), whole=BOTH,
         local_twin=lambda device=None: MobileViT(attn=None)),
    Case("mobilevit_no_attention", lambda device=None: MobileViT(attn=None), (1, 3, 32, 32)),
    Case("groupnorm", lambda device=None: NormNet("group"), (1, 3, 16, 16), whole=BOTH,
         local_twin=lambda device=None: NormNet("none")),
    Case("groupnorm_one_group", lambda device=None: NormNet("group1"), (1, 3, 16, 16), whole=BOTH,
         local_twin=lambda device=None: NormNet("none")),
    Case("functional_group_norm", lambda device=None: NormNet("functional_group"), (1, 3, 16, 16), whole=BOTH,
         local_twin=lambda device=None: NormNet("none")),
    Case("instancenorm", lambda device=None: NormNet("instance"), (1, 3, 16, 16), whole=BOTH,
         local_twin=lambda device=None: NormNet("none")),
    Case("layernorm_chw", lambda device=None: NormNet("layer_chw"), (1, 3, 16, 16), whole=BOTH,
         local_twin=lambda device=None: NormNet("none")),
    Case("layernorm_last_axis", lambda device=None: NormNet("layer_w"), (1, 3, 16, 16), whole=(False, True),
         local_twin=lambda device=None: NormNet("none")),
    Case("unet_transpose_nearest", lambda device=None: UNet("transpose"), (1, 3, 64, 64)),
    Case("unet_bilinear", lambda device=None: UNet("bilinear"), (1, 3, 64, 64)),
    Case("deeplab_aspp", lambda device=None: DeepLab(), (1, 3, 64, 64), whole=BOTH,
         local_twin=lambda device=None: DeepLab(pooling=False)),
    Case("deeplab_aspp_no_pooling", lambda device=None: DeepLab(pooling=False), (1, 3, 64, 64)),
    Case("pixel_unshuffle_stem", lambda device=None: PixelUnshuffleStem(), (1, 3, 32, 32),
         closed_form={"size": (10, 10), "jump": (2, 2), "start": (0.5, 0.5)}),
    Case("focus_stem", lambda device=None: Focus(), (1, 3, 32, 32),
         closed_form={"size": (6, 6), "jump": (2, 2), "start": (0.5, 0.5)}),
    Case("pixel_shuffle_head", lambda device=None: PixelShuffleHead(), (1, 3, 32, 32)),
    # --- global ops over tensors that read only part of the input (valid strided stems, the zoo's
    # SqueezeNet/Inception at 224): the padding a later conv reads is no input position ----------
    Case("valid_stem_global_pool", lambda device=None: nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        (1, 3, 20, 20), whole=(False, False), glob=BOTH,
        closed_form={"size": (19, 19), "jump": (0, 0)}),
    Case("gate_after_dropped_rows", lambda device=None: nn.Sequential(
        nn.Conv1d(1, 2, 3, stride=2), nn.Conv1d(2, 2, 3, padding=1), _MeanGate(2)),
        (1, 1, 8), whole=(False,), glob=(True,), closed_form={"size": (7,), "span": {0: ((0, 6),), 2: ((0, 6),)}}),
    Case("pyramid_pool_after_dropped_rows", lambda device=None: nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2), _PyramidPool(4)),
        (1, 3, 18, 18), whole=(False, False), glob=BOTH, closed_form={"size": (17, 17)}),
    Case("cat_of_grids_then_mean", lambda device=None: nn.Sequential(nn.Conv1d(1, 1, 3, 3), _CatGrids()),
         (1, 1, 13), whole=(False,), glob=(True,), closed_form={"size": (12,)}),
    Case("reads_only_padding_then_mean", lambda device=None: nn.Sequential(
        nn.Conv1d(1, 1, 1, stride=4), nn.Conv1d(1, 1, 5, stride=2, padding=5, dilation=2), GMean()),
        (1, 1, 4), whole=(False,), glob=(True,), closed_form={"size": (0,)}),
    Case("mobilevit_valid_stem", mobilevit_valid_stem, (1, 3, 34, 34), whole=(False, False), glob=BOTH),
    Case("dilated_pad_then_subsample_global", lambda device=None: nn.Sequential(
        nn.Conv1d(1, 2, 3, dilation=2, padding=2), nn.Conv1d(2, 2, 1, stride=2), nn.AdaptiveAvgPool1d(1)),
        (1, 1, 10), whole=(False,), glob=(True,), closed_form={"size": (9,), "jump": (0,)}),
    # --- refusals -------------------------------------------------------------------------------
    Case("gru_head", lambda device=None: RecurrentHead("gru"), (1, 4, 32), error=r"(?i)\bGRU\b"),
    Case("lstm_head", lambda device=None: RecurrentHead("lstm"), (1, 4, 32), error=r"(?i)\bLSTM\b"),
    Case("grid_sample", lambda device=None: GridSample(), (1, 3, 16, 16),
         error=r"grid_sample(?s:.*)1, 4, 16, 16"),
    Case("data_dependent_conv", lambda device=None: DataDependent(), (1, 2, 32), exact_or_refused=True),
    # refused either for the GRU or for the data-dependent branch, by name; never a field
    Case("data_dependent_gru", lambda device=None: DataDependent(rnn=True), (1, 2, 32),
         error=r"(?i)\bGRU\b|'gt'|data-dependent"),
]

CASES_BY_NAME = {c.name: c for c in CASES}
assert len(CASES_BY_NAME) == len(CASES), "case names must be unique"

