"""dltips: tips for training deep networks, as Hydra-configured PyTorch experiments."""

from dltips import resolvers, schema  # noqa: F401  schema: registers the config's schema

__version__ = "0.1.0"

resolvers.register()


def __getattr__(name: str):
    """`dltips.run` (dltips.api), imported on first use: `import dltips` stays light for the
    scripts, which import torch and Hydra only after turning the garbage collector off."""
    if name == "run":
        from dltips.api import run

        return run
    raise AttributeError(f"module 'dltips' has no attribute {name!r}")
