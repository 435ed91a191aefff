"""The training loop (`train`, run by a `Trainer` in named phases), and TrainState: everything
beyond the weights that a resumed run needs. docs/reliability.md says how a run resumes, diverges
and fails."""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lmlab.atomic import write_text
from lmlab.checkpoint import (CheckpointError, CheckpointWriter, checkpoint_payload, discard_checkpoints,
                              load_checkpoint, relink_best)
from lmlab.errors import ConfigError
from lmlab.data import Sampler, Split, document_rows, packed_rows
from lmlab.distributed import Ranks, all_reduce_sum, any_rank, barrier
from lmlab.errors import Preempted, TrainingDiverged
from lmlab.scoring import eval_rows, evaluate, score_split
from lmlab.flops import Throughput, mfu, model_flops_per_token, token_budget
from lmlab.metrics import EvalResult
from lmlab.model import GPT
from lmlab.rng import capture_ranks_rng, eval_stream_seed, restore_ranks_rng, seed_stream
from lmlab.runtime import resolve_runtime
from lmlab.schedule import lr_at, planned_steps, warmup_warning
from lmlab.step import TrainStep, device_batches, make_optimizer
from lmlab.stop import StopSignals
from lmlab.tracking import rewind_records

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0  # scored target tokens seen: the x-axis that compares runs fairly
    epoch: int = 0  # data position: the sampler's epoch and cursor
    cursor: int = 0
    best_val_loss: float = math.inf
    best_val: dict = field(default_factory=dict)  # val metrics of the best checkpoint
    best_step: int | None = None  # the step best.pt holds
    rng: list = field(default_factory=list)  # each rank's generators, by rank (lmlab.rng)
    wandb_run_id: str | None = None


def train_rows(cfg, split: Split, eos_id: int) -> np.ndarray:
    if cfg.data.packing:
        return packed_rows(len(split.tokens), cfg.model.max_seq_len)
    return document_rows(split.tokens, eos_id, cfg.model.max_seq_len)


def weights_finite(model: torch.nn.Module) -> bool:
    return bool(torch.stack([p.isfinite().all() for p in model.parameters()]).all())


def train(cfg, model: GPT, tokenizer, splits: dict[str, Split], tracker, run_dir: Path, config: dict,
          resume: dict | None = None, on_eval=None, launched: float | None = None, ranks: Ranks = Ranks()) -> dict:
    """Train until train.max_steps, train.max_tokens or train.max_flops, evaluating every
    train.eval_every steps and checkpointing every train.checkpoint_every; then score validation and
    test with the best checkpoint (test also per document and window position: test_scores.json).

    `resume` is a loaded checkpoint to continue from exactly; `on_eval(model, state, final=...)`
    runs after each evaluation (used to write samples; `final`: the evaluation that ends
    training); `launched` is the process's start (time.time()), from which the summary's
    startup_s counts to the end of the first step. With several `ranks`
    (torchrun), each trains on its part of every global batch under DDP and only the main one
    writes. A stop signal checkpoints and raises Preempted; a non-finite loss, validation loss or
    weights raise TrainingDiverged, leaving only checkpoints of good weights. Returns the summary.
    """
    trainer = Trainer(cfg, model, tokenizer, splits, tracker, run_dir, config, on_eval, ranks)
    trainer.start(resume)
    try:
        # From the first evaluation on, a stop signal waits for a step boundary; the bar is closed
        # before any error is printed, so the error gets a line of its own.
        with StopSignals() as stop, trainer.progress_bar() as bar:
            if resume is None:  # step 0 is scored too: the untrained baseline every curve starts from
                trainer.evaluate_and_checkpoint(None, lr_at(0, cfg.schedule, trainer.total), None)
            trainer.loop(stop, bar)
        trainer.writer.wait()
    finally:
        trainer.writer.close()
    return trainer.finish(launched)


class Trainer:
    """One run's state and the phases `train` goes through: start (fresh or resumed), the step
    loop, which evaluates and checkpoints on its way, and finish (validation, test, summary)."""

    def __init__(self, cfg, model: GPT, tokenizer, splits: dict[str, Split], tracker, run_dir: Path, config: dict,
                 on_eval, ranks: Ranks):
        tcfg = cfg.train
        if tcfg.batch_size % ranks.world:
            raise ConfigError("train.batch_size", f"a global batch of {tcfg.batch_size} rows does not split evenly "
                              f"over {ranks.world} processes; make it a multiple of {ranks.world}")
        self.cfg, self.tcfg, self.model, self.tokenizer, self.splits = cfg, tcfg, model, tokenizer, splits
        self.tracker, self.run_dir, self.config, self.on_eval, self.ranks = tracker, run_dir, config, on_eval, ranks
        self.runtime = resolve_runtime(tcfg, cfg.model.d_model, ranks.local_gpu)
        self.device = self.runtime.device
        model.to(self.device)
        self.opt = make_optimizer(model, tcfg, fused=self.device.type == "cuda")
        self.ckpt_dir = run_dir / "checkpoints"
        self.state = TrainState()
        eos = tokenizer.eos_id
        self.rows = {"train": train_rows(cfg, splits["train"], eos),
                     "validation": eval_rows(len(splits["validation"].tokens), cfg.model.max_seq_len, cfg.eval.stride)}
        self.flops_tok = model_flops_per_token(model)
        self.max_tokens = token_budget(tcfg.max_tokens, tcfg.max_flops, self.flops_tok)
        self.total = planned_steps(tcfg.max_steps, self.max_tokens, tcfg.batch_size * tcfg.grad_accum * cfg.model.max_seq_len)
        if ranks.main and (warning := warmup_warning(cfg.schedule, self.total)):
            log.warning(warning)
        self.checkpoint_every = tcfg.checkpoint_every or tcfg.eval_every
        self.writer = CheckpointWriter(self.ckpt_dir, tcfg.keep_checkpoints)
        self.saved_step: int | None = None  # the step of the newest checkpoint
        self.val: EvalResult | None = None  # the newest validation score
        # Losses stay on the device until a log step, an evaluation or a checkpoint reads them all
        # at once (summing the ranks' shares): the only waits for the device between evaluations.
        self.pending: list[torch.Tensor] = []
        self.tokens_per_s: float | None = None
        self.started, self.first_step_at = None, None
        self.eval_s = 0.0  # in evaluate(): every sweep job pays it, so the summary gives its share

    def start(self, resume: dict | None) -> None:
        """Fresh, from train.seed; or exactly where the checkpoint `resume` left off: weights,
        optimizer, train state, RNG and data position."""
        state = self.state
        if resume is not None:
            self.model.load_state_dict(resume["model"])
            self.opt.load_state_dict(resume["optimizer"])
            state = self.state = TrainState(**resume["train_state"])
            self.refuse_finished_elsewhere()
            restore_ranks_rng(state.rng, self.tcfg.seed, state.step, self.ranks)
            self.saved_step = state.step
            # best.pt must hold what best_val describes: a kill can come before its link, and a
            # checkpoint from another run dir has no best.pt here.
            if self.ranks.main and not relink_best(self.ckpt_dir, state.best_step):
                state.best_val_loss, state.best_val, state.best_step = math.inf, {}, None
        else:  # the weights were initialised alike on every rank; each draws its own dropout masks
            seed_stream(self.tcfg.seed, self.ranks)
        if self.ranks.main:
            rewind_records(self.run_dir, state.step if resume is not None else -1)
        state.wandb_run_id = self.tracker.run_id
        try:
            self.sampler = Sampler(self.rows["train"], self.tcfg.batch_size, self.tcfg.seed, state.epoch, state.cursor)
        except ValueError as e:  # more rows asked for than the data has: the user's config to fix
            raise ConfigError("train.batch_size", str(e)) from None
        self.train_step = TrainStep(self.model, self.opt, self.runtime, self.tcfg, self.ranks)
        self.started = time.perf_counter()

    def refuse_finished_elsewhere(self) -> None:
        """A finished run's checkpoint resumed by path into another run dir leaves no step to take
        and no best.pt here to score: say so, and what to run, in one line."""
        resume = self.tcfg.resume
        elsewhere = resume != "auto" and Path(resume).expanduser().resolve().parent != self.ckpt_dir.resolve()
        if elsewhere and self.done():
            raise CheckpointError(f"train.resume={resume} is a checkpoint of a finished run (step {self.state.step}, "
                                  f"{self.state.tokens:,} tokens): nothing is left to train in {self.run_dir}. Score "
                                  f"it with python -m lmlab.evaluate checkpoint={resume}, or train on with a larger "
                                  "train.max_steps or train.max_tokens")

    def progress_bar(self) -> tqdm:
        # On a terminal only (as tqdm decides); logs get one line per evaluation.
        return tqdm(total=self.total, initial=self.state.step, desc="train", unit="step", dynamic_ncols=True,
                    disable=None if self.ranks.main else True)

    def done(self) -> bool:
        return self.state.step >= self.total or (self.max_tokens is not None and self.state.tokens >= self.max_tokens)

    def loop(self, stop: StopSignals, bar: tqdm) -> None:
        """Train until done(). The loss is read (by all ranks together) at log, evaluation and
        checkpoint steps, the points where the ranks agree to stop on a signal."""
        state, tcfg = self.state, self.tcfg
        throughput = Throughput(state.step, self.total)
        self.model.train()
        while not self.done():
            lr = lr_at(state.step, self.cfg.schedule, self.total)
            micro, n_tokens = device_batches(self.splits["train"].tokens, self.sampler, tcfg.grad_accum,
                                             self.tokenizer.eos_id, self.cfg.model.doc_mask, self.device, self.ranks,
                                             self.cfg.bugs)
            self.pending.append(self.train_step(micro, lr))
            if self.first_step_at is None:
                self.first_step_at = time.time()
            state.step += 1
            state.tokens += n_tokens
            throughput.add(n_tokens)
            bar.update(1)
            evaluating = state.step % tcfg.eval_every == 0 or self.done()
            saving = evaluating or state.step % self.checkpoint_every == 0
            # One process stops at once; several only where they all read the loss, together.
            if not (saving or state.step % tcfg.log_every == 0 or (stop.received and self.ranks.world == 1)):
                continue
            loss = self.read_losses()
            stopping = any_rank(stop.received is not None, self.device)
            self.tokens_per_s = throughput.read()
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{self.tokens_per_s or 0:,.0f}")
            if evaluating:
                self.evaluate_and_checkpoint(loss, lr, self.tokens_per_s)
            elif (saving or stopping) and self.saved_step != state.step:
                self.checkpoint()
            if stopping:
                self.writer.wait()
                raise Preempted(f"stopped by {stop.received or 'a signal to another rank'} at step {state.step}; "
                                f"checkpoint saved to {self.ckpt_dir / 'last.pt'}")
            throughput.restart(state.step)

    def read_losses(self) -> float:
        """The losses of the steps since the last read; the newest. The loss of step k is that of
        the weights of step k - 1: a non-finite one is their divergence."""
        values = all_reduce_sum(torch.stack(self.pending)).tolist()
        first_step = self.state.step - len(values) + 1
        self.pending.clear()
        for i, value in enumerate(values):
            if not math.isfinite(value):
                weights = first_step + i - 1
                raise self.diverged(weights, f"the weights of step {weights} give a training loss of {value}")
        return values[-1]

    def evaluate(self, split: str, rows: np.ndarray | None = None) -> EvalResult:
        started, rows = time.perf_counter(), self.rows[split] if rows is None else rows
        result = evaluate(self.model, self.splits[split], rows, self.tokenizer.eos_id,
                          self.cfg.eval.batch_size, self.runtime,
                          self.cfg.model.doc_mask, self.cfg.eval.max_batches, self.ranks,
                          train_mode=self.cfg.bugs.eval_in_train_mode,
                          dropout_seed=eval_stream_seed(self.tcfg.seed, self.ranks.rank, self.state.step))
        self.eval_s += time.perf_counter() - started  # the result's loss was read: the device is done
        return result

    def evaluate_and_checkpoint(self, train_loss, lr, tokens_per_s) -> None:
        state = self.state
        val = self.val = self.evaluate("validation")
        self.tracker.log({"step": state.step, "tokens": state.tokens, "train_loss": train_loss,
                          "val_loss": val.loss, "val_ppl": val.ppl, "lr": lr, **self.throughput(tokens_per_s)})
        if self.ranks.main:
            log.info("step %d, %s tokens: train loss %s, val loss %.4f (ppl %.2f), %s tokens/s", state.step,
                     f"{state.tokens:,}", "-" if train_loss is None else f"{train_loss:.4f}", val.loss, val.ppl,
                     "-" if tokens_per_s is None else f"{tokens_per_s:,.0f}")
        if not math.isfinite(val.loss):
            raise self.diverged(state.step, f"the weights of step {state.step} give a validation loss of {val.loss}")
        improved = val.loss < state.best_val_loss
        if improved:
            state.best_val_loss, state.best_val, state.best_step = val.loss, val.metrics("val"), state.step
        if self.on_eval is not None:  # before the checkpoint, so the RNG it saves is the one training goes on with
            self.on_eval(self.model, state, final=self.done())
        self.checkpoint(best=improved)

    def checkpoint(self, best: bool = False) -> None:
        """Save this step (the main rank writes it in the background); never weights that are not finite."""
        state = self.state
        if not weights_finite(self.model):
            raise self.diverged(state.step, f"the weights of step {state.step} are not finite")
        state.epoch, state.cursor = self.sampler.epoch, self.sampler.cursor
        state.rng = capture_ranks_rng(self.ranks)
        if self.ranks.main:
            self.writer.save(state.step, lambda: checkpoint_payload(self.model, self.tokenizer.ref, asdict(state),
                                                                    self.config, self.opt), best)
        self.saved_step = state.step

    def throughput(self, tokens_per_s: float | None) -> dict:
        """tokens/s of the whole launch (the global batch) and of each of its devices, and MFU per
        device: the launch's FLOP/s over the peaks of all its devices."""
        per_device = None if tokens_per_s is None else tokens_per_s / self.ranks.world
        return {"tokens_per_s": tokens_per_s, "tokens_per_s_per_device": per_device,
                "mfu": mfu(self.flops_tok, per_device, self.runtime.peak)}

    def diverged(self, bad_step: int, what: str) -> TrainingDiverged:
        """The error that ends a diverged run, once the checkpoints of `bad_step` and later are gone
        (the main rank deletes them; the others learn which step is left)."""
        self.writer.close()  # its error, if any, matters less than this one
        kept = discard_checkpoints(self.ckpt_dir, bad_step) if self.ranks.main else None
        found = torch.tensor([0 if kept is None else kept + 1], device=self.device)
        kept = int(all_reduce_sum(found).item()) - 1
        if kept < 0:
            return TrainingDiverged(f"training diverged: {what}; no checkpoint holds earlier weights: a rerun starts over")
        return TrainingDiverged(f"training diverged: {what}; the last good checkpoint is {self.ckpt_dir / 'last.pt'} "
                                f"(step {kept}), where a rerun resumes (to diverge again unless a setting such as "
                                "schedule.peak_lr changes); train.resume=null starts over")

    def finish(self, launched: float | None) -> dict:
        """Validation of the final weights and test, scored once with the weights best on
        validation; returns the run's summary."""
        barrier()  # every rank reads best.pt below: the main one has finished writing it
        if self.val is None:  # resumed after the last step: score the final weights that were not scored here
            self.val = self.evaluate("validation")
        self.model.load_state_dict(load_checkpoint(self.ckpt_dir / "best.pt", self.device)["model"])
        test, scores = score_split(partial(self.evaluate, "test"), len(self.splits["test"].tokens),
                                   self.cfg.model.max_seq_len, self.cfg.eval)
        if self.ranks.main:
            write_text(self.run_dir / "test_scores.json", json.dumps(scores))
        state, model, peak, wall_s = self.state, self.model, self.runtime.peak, time.perf_counter() - self.started
        return {"status": "done", "val_ppl": self.val.ppl, "best_val_ppl": math.exp(state.best_val_loss),
                "best_val_loss": state.best_val_loss, **state.best_val, **test,
                "eval_windows": f"stride {self.cfg.eval.stride}" if self.cfg.eval.stride else "non-overlapping",
                "n_params": model.n_params(), "n_params_non_embedding": model.n_params(non_embedding=True),
                "steps": state.step, "tokens_seen": state.tokens, **self.throughput(self.tokens_per_s),
                "flops_per_token": self.flops_tok, "train_flops": self.flops_tok * state.tokens,
                "max_flops": self.tcfg.max_flops, "device": self.runtime.device_name,
                "peak_tflops": peak / 1e12 if peak else None, "precision": self.runtime.precision,
                "compiled": self.train_step.compiled,
                "checkpoint_stall_s": max(self.writer.stalls, default=None),
                "wall_s": wall_s, "eval_s": self.eval_s, "eval_share": self.eval_s / wall_s,
                "startup_s": self.first_step_at - launched if self.first_step_at and launched else None}
