"""dltips: tips for training deep networks, as Hydra-configured PyTorch experiments."""

from dltips import resolvers, schema  # noqa: F401  schema: registers the config's schema

__version__ = "0.1.0"

resolvers.register()
