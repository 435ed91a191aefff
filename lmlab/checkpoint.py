"""Checkpoints that rebuild their model alone: weights, model config, tokenizer, train state.

A run keeps its newest `keep` checkpoints as checkpoints/step-NNNNNNN.pt; last.pt and best.pt are
hard links to two of them, so neither costs a second write. Saved with write-then-rename; loaded
with torch.load(weights_only=True), so opening a file never runs code from it. The trainer saves
through `CheckpointWriter`, which writes in the background while training goes on.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import threading
import time
import zipfile
from dataclasses import asdict
from pathlib import Path

import torch

from lmlab.atomic import atomic_path
from lmlab.data.tokenizer import Tokenizer
from lmlab.errors import CheckpointError
from lmlab.model import GPT, GPTConfig

log = logging.getLogger(__name__)


def checkpoint_payload(model: GPT, tokenizer_ref: dict, train_state: dict, config: dict,
                       optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Everything a checkpoint holds, as host copies: training may change the originals at once."""
    model = getattr(model, "_orig_mod", model)  # torch.compile wraps the module
    return {"model": _host_copy(model.state_dict()), "model_config": asdict(model.cfg),
            "tokenizer": tokenizer_ref, "train_state": train_state, "config": config,
            "optimizer": _host_copy(optimizer.state_dict()) if optimizer is not None else None}


def _host_copy(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: _host_copy(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_host_copy(value) for value in obj)
    return obj


def write_checkpoint(path: Path, payload: dict) -> None:
    payload["sha256"] = _digest(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Through a Python file, unbuffered: a write the system refuses (a full disk) then leaves its
    # OSError behind torch's own error, which says only that its zip writer failed.
    with atomic_path(path) as tmp, open(tmp, "wb", buffering=0) as f:
        torch.save(payload, f)


def save_checkpoint(path: Path, model: GPT, tokenizer_ref: dict, train_state: dict, config: dict,
                    optimizer: torch.optim.Optimizer | None = None) -> None:
    write_checkpoint(path, checkpoint_payload(model, tokenizer_ref, train_state, config, optimizer))


class CheckpointWriter:
    """A run's checkpoints, written in a background thread. `save` copies the state to host memory,
    the only time training waits (its seconds are kept in `stalls`); hashing, writing, fsync, the
    rename and then the links to last.pt (and best.pt) and the pruning run while training goes on,
    so a kill still never leaves a torn last.pt. One save at a time: the next waits for the last.
    Measured for optionC on 2 CPU cores, a blocking save stalled training 6.2 s."""

    def __init__(self, ckpt_dir: Path, keep: int):
        self.ckpt_dir, self.keep = Path(ckpt_dir), keep
        self.stalls: list[float] = []
        self.writes: list[float] = []  # seconds each background write took
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, step: int, payload_of, best: bool) -> None:
        """Save step `step`'s `payload_of()` (a `checkpoint_payload`, taken after any earlier save
        has finished); link best.pt to it too when `best`."""
        self.wait()
        started = time.perf_counter()
        payload = payload_of()
        self.stalls.append(time.perf_counter() - started)
        # Not a daemon: an interpreter that exits (an exception, a signal) finishes the save first.
        self._thread = threading.Thread(target=self._write, args=(step, payload, best), name="checkpoint")
        self._thread.start()

    def _write(self, step: int, payload: dict, best: bool) -> None:
        started = time.perf_counter()
        try:
            path = step_checkpoint(self.ckpt_dir, step)
            write_checkpoint(path, payload)
            # best.pt first: a kill before last.pt's link still resumes this step (the newest step
            # file), whose best_val then describes what best.pt holds.
            if best:
                link_checkpoint(path, self.ckpt_dir / "best.pt")
            link_checkpoint(path, self.ckpt_dir / "last.pt")
            prune_checkpoints(self.ckpt_dir, self.keep)
            self.writes.append(time.perf_counter() - started)
        except (OSError, RuntimeError) as e:  # a full or unwritable disk; torch.save says RuntimeError
            self._error = CheckpointError(f"cannot save the checkpoint of step {step} in {self.ckpt_dir}: {_why(e)}")
            self._error.__cause__ = e
        except BaseException as e:  # handed to the training thread at its next wait()
            self._error = e

    def wait(self) -> None:
        """Block until the last save is on disk; raise what went wrong with it, if anything."""
        self.close()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """Let a save in flight finish without raising: the way out of another error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def _why(e: BaseException) -> str:
    """What the system said (No space left on device, ...), where torch.save's RuntimeError about
    its zip writer has it as its context."""
    for error in (e, e.__context__):
        if isinstance(error, OSError) and error.strerror:
            return error.strerror
    return (str(e).splitlines() or [type(e).__name__])[0]


def link_checkpoint(src: Path, dst: Path) -> None:
    """Make dst the same file as src without writing it twice (atomic: link, then rename)."""
    with atomic_path(dst) as tmp:
        os.link(src, tmp)


def step_checkpoints(ckpt_dir: Path) -> list[Path]:
    """The step-NNNNNNN.pt files, newest first."""
    return sorted(Path(ckpt_dir).glob("step-*.pt"), reverse=True)


def step_checkpoint(ckpt_dir: Path, step: int) -> Path:
    return Path(ckpt_dir) / f"step-{step:07d}.pt"


def prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` step files (best.pt, a hard link, keeps its own alive)."""
    for old in step_checkpoints(ckpt_dir)[keep:]:
        old.unlink()


def checkpoint_step(path: Path) -> int | None:
    """The step whose weights a checkpoint file holds, read without loading its tensors (None:
    no such file, or not a checkpoint)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["train_state"]["step"]
    except Exception:
        return None


def relink_best(ckpt_dir: Path, best_step: int | None) -> bool:
    """Make best.pt hold step `best_step` (what a resumed run's best_val describes), as a kill
    between saving that step and linking best.pt to it left it; False where no file holds it."""
    best = Path(ckpt_dir) / "best.pt"
    if best_step is None or checkpoint_step(best) == best_step:
        return best_step is not None
    source = step_checkpoint(ckpt_dir, best_step)
    if not source.is_file():
        return False
    link_checkpoint(source, best)
    return True


def discard_checkpoints(ckpt_dir: Path, from_step: int) -> int | None:
    """Delete the checkpoints of step `from_step` and later (weights that diverged), best.pt
    included, and link last.pt to the newest one left; returns its step (None: none is left)."""
    ckpt_dir = Path(ckpt_dir)
    kept = {}
    for path in [*step_checkpoints(ckpt_dir), ckpt_dir / "best.pt"]:
        step = checkpoint_step(path)
        if step is not None and step >= from_step:
            path.unlink()
        elif step is not None:
            kept.setdefault(step, path)
    last = ckpt_dir / "last.pt"
    if not kept:
        last.unlink(missing_ok=True)
        return None
    newest = max(kept)
    link_checkpoint(kept[newest], last)
    return newest


def _digest(payload: dict) -> str:
    """sha256 over every tensor's bytes and every other value: torch.load checks the zip's
    structure but not the tensor data, so a flipped byte inside a tensor would load silently."""
    h = hashlib.sha256()

    def walk(obj):
        if isinstance(obj, torch.Tensor):
            h.update(f"{obj.dtype}{tuple(obj.shape)}".encode())
            h.update(obj.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy())
        elif isinstance(obj, dict):
            for key, value in obj.items():
                if key != "sha256":
                    h.update(repr(key).encode())
                    walk(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                walk(value)
        else:
            h.update(repr(obj).encode())

    walk(payload)
    return h.hexdigest()


# What every checkpoint_payload holds; a torch file without them is another program's.
_KEYS = ("model", "model_config", "tokenizer", "train_state", "sha256")


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A checkpoint's contents, checked against its checksum. A file that is not one is named in
    one line; torch's own message would advise loading it with weights_only=False, which runs any
    code the file holds."""
    if Path(path).is_dir():
        name = "a run dir" if (Path(path) / "checkpoints").is_dir() else "a directory"
        raise CheckpointError(f"{path} is {name}, not a checkpoint: give one of its checkpoints, e.g. "
                              f"checkpoint={Path(path) / 'checkpoints' / 'best.pt'}")
    if Path(path).is_file() and not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise CheckpointError(f"{path} is not an lmlab checkpoint: not a file torch.save wrote (a checkpoint is a "
                              "zip archive), or one cut short")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except pickle.UnpicklingError:  # Python objects beyond tensors and plain values
        raise CheckpointError(f"{path} is not an lmlab checkpoint: it is a torch file of another program, "
                              "holding Python objects lmlab never unpickles") from None
    except Exception:  # zipfile, pickle and torch errors alike
        raise CheckpointError(f"{path} is not an lmlab checkpoint: not a file torch.save wrote, "
                              "or one cut short") from None
    if not isinstance(ckpt, dict) or not all(key in ckpt for key in _KEYS):
        raise CheckpointError(f"{path} is not an lmlab checkpoint: a torch file without lmlab's keys "
                              f"({', '.join(_KEYS)})")
    if ckpt.get("sha256") != _digest(ckpt):
        raise CheckpointError(f"{path} is corrupted (its contents do not match the checksum saved with it)")
    return ckpt


def latest_checkpoint(ckpt_dir: Path, map_location="cpu") -> dict | None:
    """The newest readable checkpoint in ckpt_dir (the step files newest first, then last.pt), or
    None when there is none. An unreadable one is reported in one line and the previous one used.
    Step files come first: a kill between saving one and relinking last.pt leaves last.pt behind."""
    candidates = [p for p in [*step_checkpoints(ckpt_dir), Path(ckpt_dir) / "last.pt"] if p.is_file()]
    bad: list[Path] = []
    for path in candidates:
        if any(path.samefile(b) for b in bad):  # last.pt is a link to one of the step files
            continue
        try:
            ckpt = load_checkpoint(path, map_location)
        except CheckpointError as e:
            log.warning("%s; falling back to the previous checkpoint", e)
            bad.append(path)
            continue
        log.info("resuming from %s (step %d)", path, ckpt["train_state"]["step"])
        return ckpt
    if bad:
        raise CheckpointError(f"no readable checkpoint in {ckpt_dir}; train.resume=null starts the run over")
    return None


def resume_checkpoint(resume: str | None, ckpt_dir: Path) -> dict | None:
    """What train.resume names: auto = this run dir's newest readable checkpoint (None on a
    fresh run dir), a path = that file, null or none = nothing."""
    if resume in (None, "none"):
        return None
    if resume == "auto":
        return latest_checkpoint(ckpt_dir)
    ckpt = load_checkpoint(Path(resume).expanduser())
    log.info("resuming from %s (step %d)", resume, ckpt["train_state"]["step"])
    return ckpt


def check_same_run(ckpt: dict, model_cfg: GPTConfig, data: dict, tokenizer_ref: dict) -> None:
    """Refuse to resume into a different model, corpus or tokenizer, in one line that names every
    difference. The data compares by what it is, not where it lives (data.local_dir, cache_dir):
    the same corpus may sit elsewhere on another machine."""
    def differ(saved: dict, now: dict, ignore=()) -> list[str]:
        return [f"{k}={saved.get(k)} in the checkpoint, {v} now" for k, v in now.items()
                if k not in ignore and saved.get(k) != v]

    problems = []
    if diff := differ(ckpt["model_config"], asdict(model_cfg)):
        problems.append(f"the model differs in {'; '.join(diff)}")
    saved_data = ckpt["config"].get("data")
    if saved_data is not None and (diff := differ(saved_data, data, ignore=("local_dir", "cache_dir"))):
        problems.append(f"the data differs in {'; '.join(diff)}")
    saved_tok = ckpt["tokenizer"]
    if saved_tok.get("kind") != tokenizer_ref.get("kind"):
        problems.append(f"tokenizer={saved_tok.get('kind')} in the checkpoint, {tokenizer_ref.get('kind')} now")
    elif saved_tok != tokenizer_ref:
        problems.append(f"the {tokenizer_ref.get('kind')} tokenizer's vocabulary differs")
    if problems:
        raise CheckpointError(f"cannot resume step {ckpt['train_state']['step']}: {'; '.join(problems)}. Resume with "
                              "the same model.*, data.* and tokenizer.*, or start over with train.resume=null or a "
                              "new run dir")


def load_model(path: str | Path, map_location="cpu") -> tuple[GPT, Tokenizer, dict]:
    """Model (in eval mode), tokenizer and the raw checkpoint, from the file alone."""
    ckpt = load_checkpoint(path, map_location)
    model = GPT(GPTConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(map_location).eval(), Tokenizer(ckpt["tokenizer"]), ckpt
