"""dltips: tips for training deep networks, as Hydra-configured PyTorch experiments."""

__version__ = "0.1.0"
