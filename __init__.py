"""mosaserve: one frozen Vision Transformer, many merged MoSA adapters, served with Ray Serve."""

__version__ = "0.1.0"
