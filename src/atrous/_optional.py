"""Import an optional dependency, or fail with the extra that provides it."""

from __future__ import annotations

import importlib

_EXTRA = {"torch": "torch", "matplotlib": "plot", "tqdm": "progress", "mnist1d": "data",
          "onnx": "onnx", "onnxruntime": "onnx"}


def require(module: str, extra: str | None = None):
    """Return ``import module``; if it is missing raise ``ImportError`` naming the pip extra.

    >>> require("numpy").__name__
    'numpy'
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        extra = extra or _EXTRA.get(top, top)
        raise ImportError(
            f"{module} is needed for this feature: pip install 'atrous[{extra}]'") from e
