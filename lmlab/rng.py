"""Random state, one stream per process: each rank draws its own dropout masks, saves its own
generators in the checkpoint, and a resumed rank goes on from the state it saved.

The weights are initialised from train.seed on every rank alike (lmlab.__main__ seeds before
building the model); only the stream that follows is the rank's own. Rank 0 keeps train.seed
itself, so one process draws what it always drew.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from lmlab.distributed import Ranks, gather_to_main

log = logging.getLogger(__name__)


def stream_seed(seed: int, rank: int, step: int = 0) -> int:
    """The seed of `rank`'s stream from `step` on: train.seed for rank 0 of a fresh run, else one
    mixed from all three by numpy's SeedSequence, so no rank (or step) of one seed replays a
    stream another seed's run draws, as seed + rank would (seed 1 rank 0 = seed 0 rank 1)."""
    if rank == 0 and step == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**64, rank, step]).generate_state(1, np.uint64)[0])


def seed_stream(seed: int, ranks: Ranks, step: int = 0) -> None:
    torch.manual_seed(stream_seed(seed, ranks.rank, step))


def eval_stream_seed(seed: int, rank: int, step: int) -> int:
    """The seed of the dropout masks that an evaluation at `step` draws in train mode (the seed's
    bug, bugs.eval_in_train_mode): mixed as `stream_seed` is, and apart from every training stream."""
    return int(np.random.SeedSequence([seed % 2**64, rank, step, 1]).generate_state(1, np.uint64)[0])


@contextmanager
def own_stream(seed: int, device: torch.device) -> Iterator[None]:
    """Draws from a stream of their own, seeded by `seed`: the generators (the CPU's, and the
    device's) are as they were before once it ends, so training draws the same masks whatever
    is evaluated, and how often."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def capture_rng() -> dict:
    """This process's generators: Python's, numpy's, torch's CPU one and its current GPU's (the
    rank's own; every rank saves its own, so no GPU's state is restored on another machine)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def capture_ranks_rng(ranks: Ranks) -> list[dict]:
    """Every rank's `capture_rng`, by rank, on the main process (which writes the checkpoint); an
    empty list elsewhere. A collective: every rank calls it at the same step."""
    return gather_to_main(capture_rng(), ranks) or []


def restore_ranks_rng(saved: list | dict, seed: int, step: int, ranks: Ranks) -> None:
    """Go on from this rank's saved state when the checkpoint was written by as many processes as
    run now. Otherwise a rank has no state of its own to go on from: every rank's stream is
    re-derived from (train.seed, rank, step), and the log says so."""
    # A checkpoint whose state is not a per-rank list holds one process's generators, the CUDA
    # ones of every GPU it saw, which another machine may not have: re-derived too.
    if isinstance(saved, list) and len(saved) == ranks.world:
        restore_rng(saved[ranks.rank])
        return
    if ranks.main:
        log.info("the checkpoint of step %d holds the random state of %s, this launch runs %d: each process's "
                 "dropout stream is re-derived from train.seed, its rank and the step", step,
                 f"{len(saved)} processes" if isinstance(saved, list) else "one process in an older form",
                 ranks.world)
    seed_stream(seed, ranks, step)
