"""`python -m lmlab.bench [trainer overrides] [bench.*=...]`: the trainer's own step, timed.

Composed from the trainer's config groups (`model=optionC tokenizer=gpt2 train.batch_size=16`),
it builds the run's model, optimizer and `TrainStep` and feeds it random tokens through the
trainer's own data path (`device_batches`). Warm-up steps (compilation) are left out; each timed
window ends with one device sync and the median window is reported. One table row per
configuration (`-m` runs several), optionally with Hugging Face GPT-2 on the same shapes
(`bench.compare=hf`, lmlab.hf_baseline alternated with lmlab's windows), the losses or the
precisions (`bench.compare=loss|precision`: each in its own process, alternated), the data path
(`bench.data=true`), a checkpoint save (`bench.checkpoint=true`) and where the step's time goes
(`bench.profile=true`). Every row also times evaluation (the trainer's `evaluate`, at
eval.batch_size) and its tokens/s over training's. The bench runs on train.threads threads.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import lmlab.conf  # noqa: F401  registers the trainer's schema now, so `cli` can put the bench's in its place
from lmlab.bench_probes import checkpoint_times, data_path, kernel_profile
from lmlab.config import ModelConfig, gpt_config
from lmlab.resolvers import register_configs
from lmlab.validation import validate

LR = 1e-4  # any small rate: the time of a step does not depend on it


class Bench:
    """The run's model, optimizer and TrainStep, built as the trainer builds them, on random tokens."""

    def __init__(self, cfg: DictConfig):
        import numpy as np
        import torch

        from lmlab.data import Sampler, packed_rows
        from lmlab.model import GPT
        from lmlab.runtime import resolve_runtime
        from lmlab.step import TrainStep, make_optimizer

        self.cfg = cfg
        self.runtime = resolve_runtime(cfg.train, cfg.model.d_model)
        self.device = self.runtime.device
        torch.manual_seed(cfg.train.seed)
        self.model = GPT(gpt_config(cfg, cfg.tokenizer.vocab_size)).to(self.device)
        self.opt = make_optimizer(self.model, cfg.train, fused=self.device.type == "cuda")
        self.step = TrainStep(self.model, self.opt, self.runtime, cfg.train)
        rows = 4 * cfg.train.batch_size * cfg.train.grad_accum
        self.tokens = np.random.default_rng(0).integers(0, cfg.tokenizer.vocab_size,
                                                        rows * cfg.model.max_seq_len + 1).astype(np.int64)
        self.sampler = Sampler(packed_rows(len(self.tokens), cfg.model.max_seq_len), cfg.train.batch_size,
                               cfg.train.seed)
        self.tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.model.max_seq_len

    def run(self, steps: int) -> float:
        """Seconds per step over `steps` trainer steps, ended by one device sync."""
        from lmlab.step import device_batches

        started = time.perf_counter()
        for _ in range(steps):
            batches, _ = device_batches(self.tokens, self.sampler, self.cfg.train.grad_accum, 0,
                                        self.cfg.model.doc_mask, self.device)
            loss = self.step(batches, LR)
        loss.item()
        return (time.perf_counter() - started) / steps

    def tokens_per_s(self) -> float:
        """Of the median of bench.windows windows."""
        return self.tokens_per_step / statistics.median(self.run(self.cfg.bench.steps)
                                                        for _ in range(self.cfg.bench.windows))

    def eval_tokens_per_s(self) -> float:
        """The trainer's `evaluate` over the bench's rows, at eval.batch_size: median of
        bench.windows passes, each ended by reading its result (one device sync)."""
        from lmlab.data import Split, scored_targets
        from lmlab.scoring import evaluate

        rows, split = self.sampler.rows, Split("bench", self.tokens, 1, 0, 0)

        def one_pass() -> float:
            started = time.perf_counter()
            evaluate(self.model, split, rows, 0, self.cfg.eval.batch_size, self.runtime, self.cfg.model.doc_mask)
            return time.perf_counter() - started

        one_pass()  # warm-up
        return scored_targets(rows) / statistics.median(one_pass() for _ in range(self.cfg.bench.windows))


def hf_tokens_per_s(cfg: DictConfig, vocab: int, device_type: str, compiled: bool, precision: str) -> float:
    """One run of the Hugging Face GPT-2 baseline (lmlab.hf_baseline) on the same shapes, threads
    and `precision`, in a fresh process."""
    import torch

    m = cfg.model
    cmd = [sys.executable, "-m", "lmlab.hf_baseline", "--device", device_type, "--n-layer", str(m.n_layers),
           "--n-head", str(m.n_heads), "--d-model", str(m.d_model), "--d-ff", str(ModelConfig.d_ff(m)),
           "--seq", str(m.max_seq_len), "--batch", str(cfg.train.batch_size * cfg.train.grad_accum),
           "--vocab", str(vocab), "--steps", str(cfg.bench.steps * cfg.bench.windows),
           "--warmup", str(cfg.bench.warmup_steps), "--precision", precision, "--threads", str(torch.get_num_threads()),
           *(["--compile"] if compiled else [])]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["tokens_per_s"]


def memory_gib(device, peak: bool) -> float:
    """Peak (`peak`) or current memory: on CUDA what torch's allocator has handed out, on the CPU the
    process's resident set (Linux: getrusage's peak, /proc/self/statm's current)."""
    import os
    import resource

    import torch

    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated if peak else torch.cuda.memory_allocated)(device) / 2**30
    if peak:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def bench_step(cfg: DictConfig) -> list[dict]:
    """The row of the trainer's step at cfg; with bench.compare=hf, one row per precision Hugging
    Face's GPT-2 runs at: its own default (bf16 on CUDA, fp32 on the CPU) and, where lmlab's
    precision differs, lmlab's, all alternated with lmlab's windows."""
    import torch

    from lmlab.flops import mfu, model_flops_per_token

    b = Bench(cfg)
    rt = b.runtime
    before_steps_gib = memory_gib(b.device, peak=False)
    warmup_s = b.run(cfg.bench.warmup_steps) * cfg.bench.warmup_steps if cfg.bench.warmup_steps else 0.0
    row = {"model": cfg.model.name, "d_model": cfg.model.d_model, "n_layers": cfg.model.n_layers,
           "seq": cfg.model.max_seq_len, "batch": cfg.train.batch_size * cfg.train.grad_accum,
           "vocab": cfg.tokenizer.vocab_size, "padded_vocab": b.model.cfg.padded_vocab_size,
           "device": rt.device_name, "precision": rt.precision, "threads": torch.get_num_threads(),
           "compiled": rt.compiled, "loss": b.step.loss, "warmup_s": round(warmup_s, 1)}
    hf_precisions = list(dict.fromkeys(["bf16" if b.device.type == "cuda" else "fp32", rt.precision]))
    ours, theirs = [], {precision: [] for precision in hf_precisions}
    for _ in range(cfg.bench.pairs if cfg.bench.compare == "hf" else 1):
        ours.append(b.tokens_per_s())  # alternated, so a drift in the machine's speed hits both
        for precision in theirs if cfg.bench.compare == "hf" else ():
            theirs[precision].append(hf_tokens_per_s(cfg, b.model.cfg.padded_vocab_size, b.device.type,
                                                     rt.compiled, precision))
    row["tokens_per_s"] = statistics.median(ours)
    peak_gib = memory_gib(b.device, peak=True)
    row.update(ms_per_step=1e3 * b.tokens_per_step / row["tokens_per_s"],
               mfu=mfu(model_flops_per_token(b.model), row["tokens_per_s"], rt.peak),
               peak_mem_gib=peak_gib, step_mem_gib=peak_gib - before_steps_gib,
               eval_tokens_per_s=b.eval_tokens_per_s())
    row["eval_ratio"] = row["eval_tokens_per_s"] / row["tokens_per_s"]
    if cfg.bench.checkpoint:
        row.update(checkpoint_times(b))
    if cfg.bench.profile:
        print(kernel_profile(b, row["ms_per_step"]))
    if cfg.bench.compare != "hf":
        return [row]
    rows = []
    for precision, hf in theirs.items():
        ratios = [a / h for a, h in zip(ours, hf)]
        rows.append({**row, "hf_tokens_per_s": statistics.median(hf), "ratio": statistics.median(ratios),
                     "ratios": [round(r, 3) for r in ratios], "ratio_to": f"HF {precision}"})
    return rows


def bench_process(cfg: DictConfig, key: str, value: str) -> dict:
    """The row of `python -m lmlab.bench` with this call's trainer overrides and `key`=`value`
    (train.loss=chunked, ...), in a fresh process: its peak memory is that setting's alone."""
    keep = ("bench.warmup_steps", "bench.steps", "bench.windows")
    overrides = [o for o in HydraConfig.get().overrides.task
                 if not (o.startswith(("bench.", f"{key}=")) and not o.startswith(keep))]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "lmlab.bench", *overrides, f"{key}={value}", f"bench.out={tmp}/row.jsonl",
               f"hydra.run.dir={tmp}/run"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip().splitlines()[-1:]}")
        return json.loads(Path(tmp, "row.jsonl").read_text())


def compared_settings(cfg: DictConfig) -> tuple[str, list[str]]:
    """bench.compare=loss: train.loss dense, chunked, and on CUDA liger and cce where installed
    (their kernels are Triton's); bench.compare=precision: train.precision fp32 and bf16. The first
    is the one the others' ratios are to."""
    from importlib.util import find_spec

    from lmlab.config import LOSS_PACKAGES
    from lmlab.runtime import resolve_device

    if cfg.bench.compare == "precision":
        return "train.precision", ["fp32", "bf16"]
    losses = ["dense", "chunked"]
    if resolve_device(cfg.train.device).type == "cuda":
        losses += [loss for loss, package in LOSS_PACKAGES.items() if find_spec(package)]
    return "train.loss", losses


def compare_settings(cfg: DictConfig) -> list[dict]:
    """One row per setting (`compared_settings`): the medians of bench.pairs runs, each in its own
    process, the settings alternated so a drift in the machine's speed hits all of them; `ratio` is
    the median of each round's tokens/s over the first setting's."""
    key, values = compared_settings(cfg)
    runs = {value: [] for value in values}
    for _ in range(cfg.bench.pairs):
        for value in list(runs):
            try:
                runs[value].append(bench_process(cfg, key, value))
            except RuntimeError as e:
                if value in values[:2]:
                    raise
                print(f"{key}={value} left out: {e}", flush=True)  # an optional package's kernels
                del runs[value]
    rows = []
    for value, arm in runs.items():
        row = {**arm[0], **{k: statistics.median(r[k] for r in arm) for k in (
            "tokens_per_s", "ms_per_step", "mfu", "peak_mem_gib", "step_mem_gib", "eval_tokens_per_s", "eval_ratio")
            if arm[0][k] is not None}}
        ratios = [r["tokens_per_s"] / first["tokens_per_s"] for r, first in zip(arm, runs[values[0]])]
        row.update(ratio=statistics.median(ratios), ratios=[round(r, 3) for r in ratios], ratio_to=values[0])
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    """The table of `rows`, each followed by its extra figures (checkpoint, data path)."""
    head = ["model", "shape (d x L, seq x batch, vocab)", "device", "compiled", "loss", "tokens/s", "ms/step", "MFU",
            "peak GiB (step's)", "eval tokens/s (x train)", "HF tokens/s", "ratio (pairs)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        def num(key, fmt, row=row):
            return format(row[key], fmt) if row.get(key) is not None else "-"

        cells = [row["model"], f"{row['d_model']}x{row['n_layers']}, {row['seq']}x{row['batch']}, {row['vocab']}"
                 f"{'->' + str(row['padded_vocab']) if row['padded_vocab'] != row['vocab'] else ''}",
                 f"{row['device']} {row['precision']}", str(row["compiled"]), row["loss"], num("tokens_per_s", ",.0f"),
                 num("ms_per_step", ".1f"), num("mfu", ".1%"), f"{num('peak_mem_gib', '.2f')} ({num('step_mem_gib', '.2f')})",
                 f"{num('eval_tokens_per_s', ',.0f')} ({num('eval_ratio', '.2f')})", num("hf_tokens_per_s", ",.0f"),
                 f"{row['ratio']:.3f} vs {row['ratio_to']} ({', '.join(map(str, row['ratios']))})" if "ratio" in row else "-"]
        lines.append("| " + " | ".join(cells) + " |")
        extra = {k: v for k, v in row.items() if k.startswith(("ckpt_", "tokens_per_s_while", "bpe_", "train_mb",
                                                               "cache_", "launch_", "recipe_"))}
        if extra:
            lines.append("  " + ", ".join(f"{k}={v:.3g}" for k, v in extra.items()))
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="pkg://lmlab.conf", config_name="bench")
def main(cfg: DictConfig) -> float:
    from lmlab.distributed import place_job
    from lmlab.errors import exit_for

    try:
        validate(cfg)
        place_job(cfg.train.threads, 1, 0)
        rows = compare_settings(cfg) if cfg.bench.compare in ("loss", "precision") else bench_step(cfg)
        if cfg.bench.data:
            rows[-1].update(data_path(cfg))
    except Exception as e:
        exit_for(e, "lmlab.bench")
        raise
    print(format_rows(rows), flush=True)
    if cfg.bench.out:
        with open(cfg.bench.out, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    return rows[0]["tokens_per_s"]


def cli() -> None:
    from lmlab.errors import report_errors
    from lmlab.options import answer_help

    register_configs(bench=True)
    answer_help("bench", "lmlab.bench")
    report_errors(main, prog="lmlab.bench")


if __name__ == "__main__":
    cli()
