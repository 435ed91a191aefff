"""Checkpoints that rebuild their model alone: weights, model config, tokenizer, train state.

Saved with write-then-rename; loaded with torch.load(weights_only=True), so opening a file
never runs code from it.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch

from lmlab.atomic import atomic_path
from lmlab.data.tokenizer import Tokenizer
from lmlab.model import GPT, GPTConfig


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(path: Path, model: GPT, tokenizer_ref: dict, train_state: dict, config: dict,
                    optimizer: torch.optim.Optimizer | None = None) -> None:
    model = getattr(model, "_orig_mod", model)  # torch.compile wraps the module
    payload = {"model": model.state_dict(), "model_config": asdict(model.cfg), "tokenizer": tokenizer_ref,
               "train_state": train_state, "config": config,
               "optimizer": optimizer.state_dict() if optimizer is not None else None}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def link_checkpoint(src: Path, dst: Path) -> None:
    """Make dst the same file as src without writing it twice (atomic: link, then rename)."""
    with atomic_path(dst) as tmp:
        os.link(src, tmp)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except Exception as e:  # a truncated or foreign file: zipfile, pickle and torch errors alike
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from None


def load_model(path: str | Path, map_location="cpu") -> tuple[GPT, Tokenizer, dict]:
    """Model (in eval mode), tokenizer and the raw checkpoint, from the file alone."""
    ckpt = load_checkpoint(path, map_location)
    model = GPT(GPTConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(map_location).eval(), Tokenizer(ckpt["tokenizer"]), ckpt
