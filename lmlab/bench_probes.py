"""The bench's side measurements, each asked for by a `bench.*` switch: a checkpoint save's stall
(`bench.checkpoint`), where a step's time goes by kind of kernel (`bench.profile`), and the data
path from text to the first step (`bench.data`). `b` is the bench's `lmlab.bench.Bench`: the run's
model, optimizer and step on random tokens."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lmlab.config import to_container


def checkpoint_times(b) -> dict:
    """A blocking save, then the trainer's background save: how long training waits (the stall),
    how long the write takes behind it, and the step time meanwhile."""
    from lmlab.checkpoint import CheckpointWriter, checkpoint_payload, save_checkpoint

    config = to_container(b.cfg)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        save_checkpoint(Path(tmp) / "blocking.pt", b.model, {"kind": "none"}, {}, config, b.opt)
        blocking_s = time.perf_counter() - started
        writer = CheckpointWriter(Path(tmp), keep=1)
        writer.save(1, lambda: checkpoint_payload(b.model, {"kind": "none"}, {}, config, b.opt), best=False)
        step_s = b.run(b.cfg.bench.steps)
        writer.wait()
    return {"ckpt_blocking_s": blocking_s, "ckpt_stall_s": writer.stalls[0], "ckpt_write_s": writer.writes[0],
            "tokens_per_s_while_saving": b.tokens_per_step / step_s}


# First match wins: Inductor's fused kernels are named after the ops they fuse (triton_..._log_softmax_...).
KERNEL_KINDS = [("loss (log-softmax, NLL)", r"log_softmax|nll|cross_entropy"),
                ("matmul", r"gemm|gemv|cutlass|xmma|nvjet|cublas|addmm|\bmm\b|linear"),
                ("attention", r"flash|fmha|cudnn|attention|sdpa"),
                ("optimizer", r"adam|foreach|multi_tensor"),
                ("copy", r"memcpy|memset|aten::copy_"),
                ("fused elementwise (Inductor)", r"triton")]


def kernel_profile(b, ms_per_step: float) -> str:
    """Where one window's device time goes, by kind of kernel, and its top kernels; on CUDA, the
    share of a step (`ms_per_step`, timed without the profiler) the device sits idle."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = b.device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as prof:
        b.run(b.cfg.bench.steps)
    events = [e for e in prof.key_averages() if (e.self_device_time_total if cuda else e.self_cpu_time_total) > 0]
    if cuda:  # device kernels only: CPU-side ops would count their kernels' time twice
        events = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.self_device_time_total if cuda else e.self_cpu_time_total for e in events)
    kinds: dict[str, float] = {}
    for e in events:
        kind = next((k for k, pattern in KERNEL_KINDS if re.search(pattern, e.key, re.IGNORECASE)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + (e.self_device_time_total if cuda else e.self_cpu_time_total)
    per_step = 1e-3 / b.cfg.bench.steps
    lines = [f"where a step's {'device' if cuda else 'CPU'} time goes ({busy * per_step:.2f} ms busy per step):"]
    lines += [f"  {kind:<30} {t * per_step:8.2f} ms  {100 * t / busy:5.1f}%"
              for kind, t in sorted(kinds.items(), key=lambda kv: -kv[1])]
    if cuda:  # a step that takes longer than its kernels is waiting on the host: where its time goes
        host = sum(e.self_cpu_time_total for e in prof.key_averages())
        lines.append(f"host time in ops: {host * per_step:.2f} ms per step; device idle "
                     f"{max(0.0, 1 - busy * per_step / ms_per_step):.1%} of a {ms_per_step:.2f} ms step")
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    return "\n".join(lines) + "\n" + prof.key_averages().table(sort_by=sort, row_limit=12, max_name_column_width=60)


# A cold token cache built by lmlab, and the same text through the tokenizers library's own recipe
# (train a byte-level BPE over the training documents, then encode_batch every split's): each from
# a fresh process, given the documents as `split_text` reads them.
CACHE_BUILD = """import sys
from omegaconf import OmegaConf
from lmlab.data import load_splits
cfg = OmegaConf.create(sys.argv[1])
load_splits(cfg.data, cfg.tokenizer)"""
PLAIN_RECIPE = """import json, sys
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from lmlab.data.sources import SPLITS, split_text
from lmlab.data.tokenizer import EOS
from omegaconf import OmegaConf
cfg = OmegaConf.create(sys.argv[1])
docs = {split: split_text(cfg.data, split).documents for split in SPLITS}
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
trainer = trainers.BpeTrainer(vocab_size=cfg.tokenizer.vocab_size, special_tokens=[EOS], show_progress=False)
tok.train_from_iterator(docs["train"], trainer=trainer)
for split in SPLITS:
    tok.encode_batch(docs[split])"""


def cache_build_times(cfg: DictConfig) -> dict:
    """Seconds from launch to exit of a fresh process building a cold cache of data= with lmlab,
    and of one running the plain recipe on the same documents (neither computes the floors)."""
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = to_container(cfg)
        config["data"]["cache_dir"] = tmp
        for key, script in (("cache_build_s", CACHE_BUILD), ("recipe_build_s", PLAIN_RECIPE)):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", script, json.dumps(config)], capture_output=True, check=True)
            times[key] = time.perf_counter() - started
    return {**times, "cache_build_ratio": times["cache_build_s"] / times["recipe_build_s"]}


def data_path(cfg: DictConfig) -> dict:
    """BPE encoding speed of the cache's own encoder, the warm cache's load time, a one-step run
    (one evaluation batch) on that warm cache: launch to the end of its first step (its summary's
    startup_s, counted from its first line of lmlab) and launch to exit; and a cold cache's build
    against the tokenizers library's own recipe (`cache_build_times`)."""
    from lmlab.data import load_splits
    from lmlab.data.sources import split_text
    from lmlab.data.tokens import write_tokens

    load_splits(cfg.data, cfg.tokenizer)  # builds the cache if it is cold
    started = time.perf_counter()
    tok, _ = load_splits(cfg.data, cfg.tokenizer)
    load_s = time.perf_counter() - started
    text = split_text(cfg.data, "train")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        write_tokens(tok, text.documents, Path(tmp) / "train.bin", "train")
        encode_s = time.perf_counter() - started
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("bench.")]
        cmd = [sys.executable, "-m", "lmlab", *overrides, "train.max_steps=1", "eval.max_batches=1",
               "eval.sample_tokens=0", "logger=none", f"hydra.run.dir={tmp}/run"]
        started = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        launch_s = time.perf_counter() - started
        startup_s = json.loads((Path(tmp) / "run" / "summary.json").read_text())["startup_s"]
    return {"bpe_encode_mb_s": text.n_bytes / 1e6 / encode_s, "train_mb": text.n_bytes / 1e6,
            "cache_load_s": load_s, "launch_to_first_step_s": startup_s, "launch_to_exit_1_step_s": launch_s,
            **cache_build_times(cfg)}
