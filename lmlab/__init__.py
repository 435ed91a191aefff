"""lmlab: controlled experiments on small decoder-only transformer language models."""


def __getattr__(name):
    # Lazy, so `python -m lmlab.report` never imports torch.
    if name in ("load_model", "load_checkpoint"):
        from lmlab import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(name)
