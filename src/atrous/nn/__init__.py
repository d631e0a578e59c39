"""PyTorch layers for dilated convolution (extra: torch)."""
