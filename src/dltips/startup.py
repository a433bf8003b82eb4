"""How the command-line scripts start: their imports without garbage collection."""

import atexit
import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def imports_without_garbage_collection() -> Iterator[None]:
    """Import torch, Hydra and dltips with Python's garbage collector off, then leave what
    they made out of every later collection.

    The imports make about 300,000 objects that live as long as the process (modules,
    functions, classes). The collector would walk them all in a few full collections while
    they are imported and once more at exit: about 0.5 s of a 4 s training run
    (docs/PERFORMANCE.md). After the imports they are frozen (`gc.freeze`) and the collector
    is on again for what training makes; at exit the final collection is skipped, since
    the process's memory goes back to the OS anyway.
    """
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
        atexit.register(gc.freeze)
