"""varerase: concept erasure for scale-wise visual autoregressive text-to-image models."""

__version__ = "0.1.0"
