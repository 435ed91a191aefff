"""The training loop, and TrainState: everything beyond the weights that a resumed run needs."""
from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lmlab.atomic import write_text
from lmlab.checkpoint import CheckpointWriter, checkpoint_payload, load_checkpoint
from lmlab.config import ConfigError
from lmlab.data import Sampler, Split, document_rows, packed_rows
from lmlab.distributed import Ranks, all_reduce_sum, any_rank, barrier, rank_device
from lmlab.evaluate import eval_rows, evaluate, score_split
from lmlab.flops import mfu, model_flops_per_token, peak_flops, token_budget
from lmlab.metrics import EvalResult
from lmlab.model import GPT
from lmlab.rng import capture_ranks_rng, restore_ranks_rng, seed_stream
from lmlab.step import (TrainStep, compute_context, device_batches, make_optimizer, resolve_device,
                        resolve_precision)

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    pass


class Preempted(Exception):
    """A stop signal arrived; a checkpoint of the current step was saved first."""


class StopSignals:
    """SIGTERM, SIGINT, SIGUSR1 (what `#SBATCH --signal=USR1@120` sends before a kill) and SIGUSR2
    (what submitit asks SLURM for) only set `received`, so the loop can checkpoint at the next step
    boundary; a second signal then acts as it normally would. When the stop leaves as Preempted and
    the signal had a Python handler before (submitit's, which requeues the job), the signal is
    handed on to it once the checkpoint is on disk."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)

    def __enter__(self):
        self.received: str | None = None
        # Handlers can only be installed from the main thread; elsewhere signals keep their meaning.
        main = threading.current_thread() is threading.main_thread()
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS} if main else {}
        self._handed_on = None
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name
        self._handed_on = self._previous.get(signum)
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, exc_type, *exc) -> None:
        self._restore()
        # Python's own SIGINT handler would only turn the stop into a KeyboardInterrupt.
        if exc_type is Preempted and callable(self._handed_on) and self._handed_on is not signal.default_int_handler:
            signal.raise_signal(signal.Signals[self.received])


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0  # scored target tokens seen: the x-axis that compares runs fairly
    epoch: int = 0  # data position: the sampler's epoch and cursor
    cursor: int = 0
    best_val_loss: float = math.inf
    best_val: dict = field(default_factory=dict)  # val metrics of the best checkpoint
    rng: list = field(default_factory=list)  # each rank's generators, by rank (lmlab.rng)
    wandb_run_id: str | None = None


def device_peak(device: torch.device, tcfg) -> tuple[str, float | None]:
    """The device's name and its dense peak FLOP/s at the run's precision (None: unknown)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    precision = resolve_precision(device, tcfg.precision)
    if precision == "fp32" and device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        precision = "tf32"
    peak = peak_flops(name, precision, tcfg.peak_tflops)
    if peak is None:
        log.info("MFU unknown: no %s peak known for %s; set train.peak_tflops to report it", precision, name)
    return name, peak


def lr_at(step: int, sched, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then cosine or constant."""
    if step < sched.warmup_steps:
        return sched.peak_lr * (step + 1) / sched.warmup_steps
    if sched.decay == "constant":
        return sched.peak_lr
    progress = min(1.0, (step - sched.warmup_steps) / max(1, total_steps - sched.warmup_steps))
    floor = sched.min_lr_ratio * sched.peak_lr
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (sched.peak_lr - floor)


def planned_steps(max_steps: int | None, max_tokens: int | None, tokens_per_step: int) -> int:
    """Steps until the first limit: max_steps, or max_tokens at full rows (the cosine horizon)."""
    limits = [max_steps] if max_steps else []
    if max_tokens:
        limits.append(math.ceil(max_tokens / tokens_per_step))
    return min(limits)


def train_rows(cfg, split: Split, eos_id: int) -> np.ndarray:
    if cfg.data.packing:
        return packed_rows(len(split.tokens), cfg.model.max_seq_len)
    return document_rows(split.tokens, eos_id, cfg.model.max_seq_len)


def rewind_records(run_dir: Path, step: int) -> None:
    """Drop the run dir's .jsonl records (metrics, samples) logged after `step`: a run resumed from
    that step logs them again. A line cut short by a kill is dropped too."""
    for path in run_dir.glob("*.jsonl"):
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", step) <= step:
                    kept.append(line + "\n")
            except ValueError:
                continue
        write_text(path, "".join(kept))


def train(cfg, model: GPT, tokenizer, splits: dict[str, Split], tracker, run_dir: Path, config: dict,
          resume: dict | None = None, on_eval=None, launched: float | None = None, ranks: Ranks = Ranks()) -> dict:
    """Train until train.max_steps, train.max_tokens or train.max_flops, evaluating every
    train.eval_every steps and checkpointing every train.checkpoint_every; then score validation and
    test with the best checkpoint (test also per document and window position: test_scores.json).

    `resume` is a loaded checkpoint to continue from exactly; `on_eval(model, state)` runs after
    each evaluation (used to write samples); `launched` is the process's start (time.time()), from
    which the summary's startup_s counts to the end of the first step. With several `ranks`
    (torchrun), each trains on its part of every global batch under DDP and only the main one
    writes. A stop signal checkpoints and raises Preempted; a non-finite loss raises
    TrainingDiverged, leaving the last good checkpoint. Returns the summary.
    """
    tcfg, eos = cfg.train, tokenizer.eos_id
    if tcfg.batch_size % ranks.world:
        raise ConfigError("train.batch_size", f"a global batch of {tcfg.batch_size} rows does not split evenly over "
                          f"{ranks.world} processes; make it a multiple of {ranks.world}")
    device = rank_device(resolve_device(tcfg.device), ranks)
    model.to(device)
    opt = make_optimizer(model, tcfg, fused=device.type == "cuda")
    ckpt_dir = run_dir / "checkpoints"
    state = TrainState()
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        state = TrainState(**resume["train_state"])
        restore_ranks_rng(state.rng, tcfg.seed, state.step, ranks)
        if not (ckpt_dir / "best.pt").is_file():  # resumed from elsewhere: best.pt is this run dir's
            state.best_val_loss, state.best_val = math.inf, {}
    else:  # the weights were initialised alike on every rank; each draws its own dropout masks
        seed_stream(tcfg.seed, ranks)
    if ranks.main:
        rewind_records(run_dir, state.step if resume is not None else -1)
    state.wandb_run_id = tracker.run_id

    rows = {"train": train_rows(cfg, splits["train"], eos),
            "validation": eval_rows(len(splits["validation"].tokens), cfg.model.max_seq_len, cfg.eval.stride)}
    try:
        sampler = Sampler(rows["train"], tcfg.batch_size, tcfg.seed, state.epoch, state.cursor)
    except ValueError as e:  # more rows asked for than the data has: the user's config to fix
        raise ConfigError("train.batch_size", str(e)) from None
    flops_tok = model_flops_per_token(model)
    max_tokens = token_budget(tcfg.max_tokens, tcfg.max_flops, flops_tok)
    total = planned_steps(tcfg.max_steps, max_tokens, tcfg.batch_size * tcfg.grad_accum * cfg.model.max_seq_len)
    step = TrainStep(model, opt, device, tcfg, ranks)
    segments = cfg.model.doc_mask
    checkpoint_every = tcfg.checkpoint_every or tcfg.eval_every
    saved_step = state.step if resume is not None else None
    writer = CheckpointWriter(ckpt_dir, tcfg.keep_checkpoints)
    device_name, peak = device_peak(device, tcfg)

    def run_eval(split: str, split_rows: np.ndarray | None = None) -> EvalResult:
        split_rows = rows[split] if split_rows is None else split_rows
        return evaluate(model, splits[split], split_rows, eos, cfg.eval.batch_size, device,
                        partial(compute_context, device, tcfg), segments, cfg.eval.max_batches, ranks,
                        train_mode=cfg.bugs.eval_in_train_mode)

    def checkpoint(best: bool = False) -> None:
        nonlocal saved_step
        state.epoch, state.cursor = sampler.epoch, sampler.cursor
        state.rng = capture_ranks_rng(ranks)
        if ranks.main:
            writer.save(state.step, lambda: checkpoint_payload(model, tokenizer.ref, asdict(state), config, opt), best)
        saved_step = state.step

    def done() -> bool:
        return state.step >= total or (max_tokens is not None and state.tokens >= max_tokens)

    def throughput(tokens_per_s) -> dict:
        """tokens/s of the whole launch (the global batch) and of each of its devices, and MFU per
        device: the launch's FLOP/s over the peaks of all its devices."""
        per_device = None if tokens_per_s is None else tokens_per_s / ranks.world
        return {"tokens_per_s": tokens_per_s, "tokens_per_s_per_device": per_device,
                "mfu": mfu(flops_tok, per_device, peak)}

    def eval_and_checkpoint(train_loss, lr, tokens_per_s) -> EvalResult:
        val = run_eval("validation")
        tracker.log({"step": state.step, "tokens": state.tokens, "train_loss": train_loss,
                     "val_loss": val.loss, "val_ppl": val.ppl, "lr": lr, **throughput(tokens_per_s)})
        if ranks.main:
            log.info("step %d, %s tokens: train loss %s, val loss %.4f (ppl %.2f), %s tokens/s", state.step,
                     f"{state.tokens:,}", "-" if train_loss is None else f"{train_loss:.4f}", val.loss, val.ppl,
                     "-" if tokens_per_s is None else f"{tokens_per_s:,.0f}")
        improved = val.loss < state.best_val_loss
        if improved:
            state.best_val_loss, state.best_val = val.loss, val.metrics("val")
        if on_eval is not None:  # before the checkpoint, so the RNG it saves is the one training goes on with
            on_eval(model, state)
        checkpoint(best=improved)
        return val

    # Losses stay on the device until a log step, an evaluation or a checkpoint reads them all at
    # once (summing the ranks' shares): the only waits for the device between evaluations, and the
    # points where all ranks agree to stop. A non-finite loss stops the run there on every rank,
    # before anything is saved from the weights it produced.
    pending: list[torch.Tensor] = []

    def read_losses() -> float:
        values = all_reduce_sum(torch.stack(pending)).tolist()
        first_step = state.step - len(values) + 1
        pending.clear()
        for i, value in enumerate(values):
            if not math.isfinite(value):
                writer.wait()
                raise TrainingDiverged(f"training diverged: loss is {value} at step {first_step + i - 1}; "
                                       f"the last good checkpoint is {ckpt_dir / 'last.pt'} (step {saved_step})")
        return values[-1]

    tokens_per_s, started, first_step_at = None, time.perf_counter(), None
    try:
        # From the first evaluation on, a stop signal waits for a step boundary; the bar is closed
        # before any error is printed, so the error gets a line of its own.
        # The bars show on a terminal only (as tqdm decides); logs get one line per evaluation.
        with StopSignals() as stop, tqdm(total=total, initial=state.step, desc="train", unit="step",
                                         dynamic_ncols=True, disable=None if ranks.main else True) as bar:
            # Step 0 is scored too: the untrained baseline every curve starts from.
            val = eval_and_checkpoint(None, lr_at(0, cfg.schedule, total), None) if resume is None else None
            # Throughput leaves out this process's first steps (compilation, allocator warm-up make
            # them several times slower) and evaluation, and is measured between reads of the loss.
            skip = state.step + min(5, total // 10)
            timed_tokens, timed_s = 0, 0.0
            window_start, window_tokens, window_first = time.perf_counter(), 0, state.step + 1
            model.train()
            while not done():
                lr = lr_at(state.step, cfg.schedule, total)
                micro, n_tokens = device_batches(splits["train"].tokens, sampler, tcfg.grad_accum, eos,
                                                 segments, device, ranks, cfg.bugs)
                pending.append(step(micro, lr))
                if first_step_at is None:
                    first_step_at = time.time()
                state.step += 1
                state.tokens += n_tokens
                window_tokens += n_tokens
                bar.update(1)
                evaluating = state.step % tcfg.eval_every == 0 or done()
                saving = evaluating or state.step % checkpoint_every == 0
                # One process stops at once; several only where they all read the loss, together.
                if not (saving or state.step % tcfg.log_every == 0 or (stop.received and ranks.world == 1)):
                    continue
                loss = read_losses()
                stopping = any_rank(stop.received is not None, device)
                if window_first > skip:
                    timed_tokens, timed_s = timed_tokens + window_tokens, timed_s + time.perf_counter() - window_start
                tokens_per_s = timed_tokens / timed_s if timed_s else None
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s or 0:,.0f}")
                if evaluating:
                    val = eval_and_checkpoint(loss, lr, tokens_per_s)
                elif (saving or stopping) and saved_step != state.step:
                    checkpoint()
                if stopping:
                    writer.wait()
                    raise Preempted(f"stopped by {stop.received or 'a signal to another rank'} at step {state.step}; "
                                    f"checkpoint saved to {ckpt_dir / 'last.pt'}. Run the same command again to resume")
                window_start, window_tokens, window_first = time.perf_counter(), 0, state.step + 1
        writer.wait()
    finally:
        writer.close()
    barrier()  # every rank reads best.pt below: the main one has finished writing it
    if val is None:  # resumed after the last step: score the final weights that were not scored here
        val = run_eval("validation")

    # Test is scored once, with the weights that were best on validation.
    model.load_state_dict(load_checkpoint(ckpt_dir / "best.pt", device)["model"])
    test, scores = score_split(partial(run_eval, "test"), len(splits["test"].tokens), cfg.model.max_seq_len,
                               cfg.eval)
    if ranks.main:
        write_text(run_dir / "test_scores.json", json.dumps(scores))
    return {"status": "done", "val_ppl": val.ppl, "best_val_ppl": math.exp(state.best_val_loss),
            "best_val_loss": state.best_val_loss, **state.best_val, **test,
            "eval_windows": f"stride {cfg.eval.stride}" if cfg.eval.stride else "non-overlapping",
            "n_params": model.n_params(), "n_params_non_embedding": model.n_params(non_embedding=True),
            "steps": state.step, "tokens_seen": state.tokens, **throughput(tokens_per_s),
            "flops_per_token": flops_tok, "train_flops": flops_tok * state.tokens, "max_flops": tcfg.max_flops,
            "device": device_name,
            "peak_tflops": peak / 1e12 if peak else None, "compiled": step.compiled,
            "checkpoint_stall_s": max(writer.stalls, default=None), "wall_s": time.perf_counter() - started,
            "startup_s": first_step_at - launched if first_step_at and launched else None}
