"""lmlab: controlled experiments on small decoder-only transformer language models."""
import time

LAUNCHED = time.time()  # `python -m lmlab` imports this first: a run's startup_s counts from here


def __getattr__(name):
    # Lazy, so `python -m lmlab.report` never imports torch.
    if name in ("load_model", "load_checkpoint"):
        from lmlab import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(name)
