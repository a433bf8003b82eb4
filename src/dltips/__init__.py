"""dltips: tips for training deep networks, as Hydra-configured PyTorch experiments."""

from dltips import resolvers

__version__ = "0.1.0"

resolvers.register()
