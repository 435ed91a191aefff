"""Typed config schema, registered in Hydra's ConfigStore, and the checks that run before any compute.

Each subsystem has one dataclass; conf/*.yaml fill them in. A typo in a key or a wrongly typed
value is rejected by OmegaConf when Hydra composes; `validate` adds the cross-field checks.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from lmlab.errors import SCHEMA_PREFIX, ConfigError

if TYPE_CHECKING:  # importing torch takes seconds: a mistyped override is answered without it
    from lmlab.model import GPTConfig


@dataclass
class ModelConfig:
    name: str = MISSING
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4
    d_ff_ratio: float = 2.0  # d_ff = d_ff_ratio * d_model, so sweeps vary the ratio directly
    max_seq_len: int = 256
    dropout: float = 0.0
    doc_mask: bool = False  # packed rows: tokens do not attend across an EOS

    @staticmethod
    def d_ff(cfg) -> int:
        return int(round(cfg.d_ff_ratio * cfg.d_model))


@dataclass
class DataConfig:
    name: str = MISSING
    kind: str = "wikitext"  # wikitext | hub (any dataset, a row per document) | text (a folder of .txt/.jsonl)
    hub_id: Optional[str] = MISSING  # a hub dataset id, or a local folder datasets can load
    hub_config: Optional[str] = None
    text_column: str = "text"  # hub: the column holding each document; text: the .jsonl field
    local_dir: Optional[str] = None  # wikitext: null = download hub_id with `datasets`; text: the folder or one file
    split_on: Optional[str] = None  # text: a regex that cuts every .txt file into documents (lmlab/data/sources.py)
    # wikitext in a local folder: every article of its files (any of train/valid/test) in one pool,
    # validation and test carved from it as whole articles (data.holdout each), the rest trains
    pool: bool = False
    # hub and text corpora without a validation or test split, and a pooled WikiText folder:
    # documents carved for each, a fraction (< 1) or a count (>= 1), by datasets' train_test_split
    # seeded with split_seed
    holdout: float = 0.05
    split_seed: int = 0
    cache_dir: str = "${oc.env:LMLAB_CACHE_DIR,'~/.cache/lmlab'}"
    packing: bool = True  # true: documents concatenated with EOS; false: one document per row


@dataclass
class TokenizerConfig:
    kind: str = "bpe"  # bpe: trained on the training split (offline); gpt2: tiktoken's encoding
    vocab_size: int = 8192


@dataclass
class ScheduleConfig:
    name: str = MISSING
    peak_lr: float = 6e-4
    warmup_steps: int = 2000
    decay: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.1


# train.loss options that need an optional package (lmlab/loss.py), and the module each imports
LOSS_PACKAGES = {"liger": "liger_kernel", "cce": "cut_cross_entropy"}


@dataclass
class TrainConfig:
    max_steps: Optional[int] = 5000
    max_tokens: Optional[int] = None
    # FLOPs budget: stop once flops_per_token x tokens >= max_flops (the FLOPs per token MFU uses,
    # lmlab.flops); the LR schedule's horizon counts it as it counts max_steps and max_tokens
    max_flops: Optional[float] = None
    batch_size: int = 32
    grad_accum: int = 1
    eval_every: int = 250
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on CUDA and on CPUs with native bf16 for d_model >= 128, else fp32) | fp32 | bf16
    compile: str = "auto"  # auto (on CUDA only) | true | false: torch.compile of the step's forward and loss
    compile_mode: Optional[str] = None  # torch.compile's mode: null (default) | reduce-overhead | max-autotune
    loss: str = "auto"  # auto (dense, as measured so far) | dense | chunked | liger | cce (docs/speed.md)
    attention: str = "auto"  # SDPA backend tried first: auto (cudnn on Hopper) | cudnn | flash | efficient | math
    peak_tflops: Optional[float] = None  # the device's dense peak for MFU; null = the table in lmlab/flops.py
    deterministic: bool = False  # bit-identical reruns on CUDA too: deterministic kernels, math attention (slower)
    threads: Optional[int] = None  # torch's CPU threads; null = torch's default, or cores / n_jobs under hydra/launcher=parallel
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    log_every: int = 10
    resume: Optional[str] = "auto"  # auto: this run dir's newest readable checkpoint, if any | PATH | null: start over
    checkpoint_every: Optional[int] = None  # null = eval_every; a resume point need not cost an evaluation
    keep_checkpoints: int = 2  # newest step-NNNNNNN.pt files kept; best.pt is kept besides
    # Seconds a process waits in a collective for the others before the launch stops (see
    # docs/scale-out.md): above the longest wait a healthy launch has, e.g. one node building a
    # 118.6M-token cache (131 s on 2 cores) while the others read theirs.
    dist_timeout_s: float = 300.0


@dataclass
class EvalConfig:
    batch_size: int = 16
    stride: Optional[int] = None  # null: non-overlapping windows; k: sliding windows scoring k new tokens each
    max_batches: Optional[int] = None  # null = the whole split (the only number to report)
    # also score test on windows of this length (<= model.max_seq_len): test_common_* in the summary,
    # "common" in test_scores.json; arms with different contexts compare on the same windows
    common_window: Optional[int] = None
    sample_tokens: int = 32  # tokens sampled per prompt at each evaluation into samples.jsonl; 0 = none
    sample_prompts: list = field(default_factory=lambda: [
        " = Valkyria Chronicles = \n", " The game was released in", " In 1990 , the"])


@dataclass
class BugsConfig:
    """The seed's bugs, put back on purpose so the rootcause study measures what each one costs
    (sweeps/variant/bug_*.yaml). Off by default; a run with one on says so in a warning and in
    its summary.json. Never turn one on in a run you mean to use."""
    drop_eos_targets: bool = False  # EOS is never a training target: the model never learns to end a document
    eval_in_train_mode: bool = False  # validation and test scored in train mode (dropout on)
    # data.packing=false rows without their padding mask: padded keys are attended to and the pad
    # token (EOS) is a training target at every padded position
    no_pad_mask: bool = False


@dataclass
class RootcauseConfig:
    """The values the rootcause study's arms (sweeps/variant/) put in place of the baseline's, one
    factor per arm (all_fixes: every one). Defaults are the fixes proposed for the seed: optionA's
    width and depth, d_ff = 4 x d_model, context 512, 2000 warmup steps; a smaller study's
    `scale` (sweeps/scale/) sets smaller ones to go with its smaller baseline."""
    d_model: int = 512
    n_heads: int = 8
    n_layers: int = 6
    d_ff_ratio: float = 4.0
    max_seq_len: int = 512
    warmup_steps: int = 2000
    min_lr_ratio: float = 0.1  # the decay arms' cosine floor, as schedule=warmup's
    # Every arm's batch holds this many tokens (rows = batch_tokens / its context), so every arm
    # takes the same steps under the same LR schedule: the seed's 32 rows of 256.
    batch_tokens: int = 8192
    # The baseline's context: arms with another one (context, all_fixes) are also scored on test
    # windows of this length (eval.common_window), the windows the baseline is scored on.
    common_window: int = 256
    # Stage 1's peak LRs (a sweep value list): a factor 2 apart around the scale's usual LR.
    lr_grid: str = "1.5e-4,3e-4,6e-4"
    # The baseline's training FLOPs (lmlab.flops: its FLOPs per token x train.max_tokens), the
    # budget of the equal-compute arms (size_compute, ratio_compute): model=small at scale=seed.
    max_flops: float = 1.16253523968e15


def rows_of(tokens: int, context: int) -> int:
    """`${lmlab.rows:tokens,context}`: the rows of `context` tokens that hold `tokens`, exactly."""
    if tokens % context:
        raise ConfigError("lmlab.rows", f"{tokens} tokens do not fill whole rows of {context}: "
                          "pick a batch_tokens that every arm's context divides")
    return tokens // context


@dataclass
class LoggerConfig:
    kind: str = "none"  # none | wandb
    project: str = "lmlab"
    entity: Optional[str] = None
    mode: Optional[str] = None  # null: online with an API key, else offline
    tags: list = field(default_factory=list)


@dataclass
class Config:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    schedule: ScheduleConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    bugs: BugsConfig = field(default_factory=BugsConfig)
    rootcause: RootcauseConfig = field(default_factory=RootcauseConfig)


@dataclass
class BenchConfig:
    """`python -m lmlab.bench`: how to time the trainer's step, and what else to measure."""
    warmup_steps: int = 3  # untimed: compilation and allocator warm-up
    steps: int = 10  # steps per timed window (one device sync per window)
    windows: int = 5  # the median window is reported
    # none | hf: the same shapes through lmlab.hf_baseline, alternated with lmlab's windows | loss:
    # each train.loss (dense, chunked; liger, cce on CUDA where installed) in its own process,
    # alternated | precision: train.precision fp32 and bf16, the same way
    compare: str = "none"
    pairs: int = 3  # alternated (lmlab, HF) pairs or rounds of the settings; the median ratio is reported
    data: bool = False  # also the data path: BPE encoding MB/s, warm cache load, launch to exit of a 1-step run
    checkpoint: bool = False  # also a checkpoint save: the stall and the background write
    profile: bool = False  # also the top kernels of one window (torch.profiler)
    out: Optional[str] = None  # append each row as a JSON line to this file


@dataclass
class BenchRunConfig(Config):
    bench: BenchConfig = field(default_factory=BenchConfig)



def register_configs(bench: bool = False) -> None:
    """The schema that conf/*.yaml extend. `bench=True` puts the bench's schema (the trainer's plus a
    `bench` node) under the name config.yaml starts from, so the bench composes every trainer group."""
    from lmlab.options import options_page

    cs = ConfigStore.instance()
    cs.store(name=f"{SCHEMA_PREFIX}config", node=BenchRunConfig if bench else Config)
    for group, node in [("model", ModelConfig), ("data", DataConfig), ("schedule", ScheduleConfig),
                        ("tokenizer", TokenizerConfig), ("train", TrainConfig), ("eval", EvalConfig),
                        ("logger", LoggerConfig)]:
        cs.store(group=group, name=f"{SCHEMA_PREFIX}{group}", node=node)
    OmegaConf.register_new_resolver("lmlab.rows", rows_of, replace=True)
    OmegaConf.register_new_resolver("lmlab.package_dir", package_dir, replace=True)
    OmegaConf.register_new_resolver("lmlab.options", options_page, replace=True)
    OmegaConf.register_new_resolver("lmlab.dirname", lambda: job_dirname(job_name()), replace=True)
    # Cached, so Hydra carries the value into every job of a sweep (as it does `now`).
    OmegaConf.register_new_resolver("lmlab.launch", launch_stamp, replace=True, use_cache=True)


def package_dir(name: str) -> str:
    """`${lmlab.package_dir:NAME}`: the folder of the installed package NAME, found without
    importing it, so a config can read data files that a dependency installs."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("lmlab.package_dir", f"no installed package {name!r}: reinstall lmlab (pip install -e .)")
    return spec.submodule_search_locations[0]


def swept_keys(hydra_cfg: DictConfig) -> set[str]:
    """The keys a multirun sweeps over: its sweeper's params and the command line's sweep overrides
    (`a=1,2`, `range(...)`, ...). A job's own config only holds its values, so the command line is
    read from the sweep's multirun.yaml, which Hydra's sweeper writes before launching any job."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    master = Path(hydra_cfg.sweep.dir) / "multirun.yaml"
    source = OmegaConf.load(master).hydra if master.is_file() else hydra_cfg
    params = source.sweeper.get("params") or {}
    lines = [f"{key}={value}" for key, value in params.items()] + list(source.overrides.task)
    return {o.key_or_group for o in OverridesParser.create().parse_overrides(lines) if o.is_sweep_override()}


def job_name(hydra_cfg: DictConfig | None = None) -> str:
    """A job's overrides as one string: in a sweep, the swept ones first, as the report's table
    puts them, then the rest, each part sorted; the keys Hydra's override_dirname excludes are left
    out. The same command always gives the same name, so a relaunched sweep finds its job dirs."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    hydra_cfg = hydra_cfg or HydraConfig.get()
    style = hydra_cfg.job.config.override_dirname
    overrides = [o for o in OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task))
                 if o.key_or_group not in style.exclude_keys]
    swept = swept_keys(hydra_cfg) if hydra_cfg.mode == RunMode.MULTIRUN else set()
    lines = sorted(o.input_line for o in overrides if o.key_or_group in swept) + \
        sorted(o.input_line for o in overrides if o.key_or_group not in swept)
    return style.item_sep.join(line.replace("=", style.kv_sep, 1) for line in lines)


def launch_stamp(pattern: str) -> str:
    """A run or sweep dir name that every process of one launch agrees on, and no other launch
    shares: the time now in `pattern`; under torchrun, `torchrun-` and the time its first process
    read, shared with the others through torchrun's store (lmlab.distributed.first_offered).
    torchrun's run id cannot serve: it is the literal `none` in a static launch
    (--master-addr/--master-port) and the same in every launch given the same --rdzv-id."""
    now = datetime.now().strftime(pattern)
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return now
    from lmlab.distributed import first_offered

    shared = first_offered("lmlab.launch_stamp", now)
    if shared is None:
        raise ConfigError("hydra.run.dir", "this torchrun launch shares no store with its processes "
                          "(TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1), so they cannot agree on a run dir: set hydra.run.dir")
    return f"torchrun-{shared}"


def job_dirname(name: str, limit: int = 200) -> str:
    """A sweep job's dir name: its `job_name`, cut to fit a file name (255 bytes) when long and
    ended with a hash of the whole, so it stays unique and a relaunched sweep finds the same dir."""
    if len(name.encode()) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{name.encode()[:limit - 13].decode(errors='ignore')}~{digest}"


def _positive(cfg: DictConfig, keys: list[str]) -> None:
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if value is not None and value <= 0:
            raise ConfigError(key, f"must be positive, got {value}")


def _one_of(cfg: DictConfig, key: str, allowed: tuple) -> None:
    value = OmegaConf.select(cfg, key)
    if value not in allowed:
        raise ConfigError(key, f"must be one of {', '.join(map(str, allowed))}; got {value!r}")


def validate(cfg: DictConfig) -> None:
    """Cross-field checks, run before any data is loaded. Raises ConfigError."""
    _positive(cfg, ["model.d_model", "model.n_heads", "model.n_layers", "model.d_ff_ratio",
                    "model.max_seq_len", "tokenizer.vocab_size", "schedule.peak_lr",
                    "train.max_steps", "train.max_tokens", "train.max_flops", "train.batch_size", "train.grad_accum",
                    "train.eval_every", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                    "eval.batch_size", "eval.max_batches", "eval.stride", "eval.common_window", "train.peak_tflops",
                    "train.threads", "train.dist_timeout_s"])
    if cfg.model.d_model % cfg.model.n_heads:
        raise ConfigError("model.n_heads", f"d_model={cfg.model.d_model} is not divisible by "
                          f"n_heads={cfg.model.n_heads}")
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise ConfigError("model.dropout", f"must be in [0, 1), got {cfg.model.dropout}")
    if cfg.schedule.warmup_steps < 0:
        raise ConfigError("schedule.warmup_steps", f"must be >= 0, got {cfg.schedule.warmup_steps}")
    if cfg.eval.sample_tokens < 0:
        raise ConfigError("eval.sample_tokens", f"must be >= 0 (0 = no samples), got {cfg.eval.sample_tokens}")
    if not 0.0 <= cfg.schedule.min_lr_ratio <= 1.0:
        raise ConfigError("schedule.min_lr_ratio", f"must be in [0, 1], got {cfg.schedule.min_lr_ratio}")
    if cfg.train.max_steps is None and cfg.train.max_tokens is None and cfg.train.max_flops is None:
        raise ConfigError("train.max_steps", "set train.max_steps, train.max_tokens or train.max_flops (or several)")
    if cfg.eval.stride is not None and cfg.eval.stride > cfg.model.max_seq_len:
        raise ConfigError("eval.stride", f"must be <= model.max_seq_len={cfg.model.max_seq_len}")
    if cfg.eval.common_window is not None and cfg.eval.common_window > cfg.model.max_seq_len:
        raise ConfigError("eval.common_window", f"must be <= model.max_seq_len={cfg.model.max_seq_len}")
    if cfg.eval.stride is not None and cfg.eval.common_window is not None and cfg.eval.stride > cfg.eval.common_window:
        raise ConfigError("eval.stride", f"must be <= eval.common_window={cfg.eval.common_window}: a longer "
                          "stride would leave tokens between the common windows unscored")
    if "bench" in cfg:
        _positive(cfg, ["bench.steps", "bench.windows", "bench.pairs"])
        _one_of(cfg, "bench.compare", ("none", "hf", "loss", "precision"))
    if cfg.tokenizer.vocab_size < 260:
        raise ConfigError("tokenizer.vocab_size", "must be at least 260 (256 bytes + EOS + merges)")
    _one_of(cfg, "data.kind", ("wikitext", "hub", "text"))
    if cfg.data.kind == "text" and cfg.data.local_dir is None:
        raise ConfigError("data.local_dir", "data=text reads a local folder of .txt/.jsonl files (or one such file): "
                          "set data.local_dir=DIR")
    if cfg.data.kind == "hub" and OmegaConf.is_missing(cfg.data, "hub_id"):
        raise ConfigError("data.hub_id", "data=hub needs a dataset: set data.hub_id=ID (a hub id or a local folder)")
    if cfg.data.kind == "hub" and cfg.data.local_dir is not None:
        raise ConfigError("data.local_dir", "data=hub loads data.hub_id (a hub id or a local folder datasets can "
                          "read); for a folder of .txt/.jsonl files use data=text")
    if cfg.data.pool and (cfg.data.kind != "wikitext" or cfg.data.local_dir is None):
        raise ConfigError("data.pool", "pools the articles of a local WikiText folder: set data.local_dir=DIR")
    if cfg.data.split_on is not None:
        if cfg.data.kind != "text":
            raise ConfigError("data.split_on", "cuts the .txt files of data=text into documents; this corpus is "
                              f"data.kind={cfg.data.kind}")
        try:
            re.compile(cfg.data.split_on)
        except re.error as e:
            raise ConfigError("data.split_on", f"not a regular expression: {e}") from None
    if (cfg.data.kind != "wikitext" or cfg.data.pool) and cfg.data.holdout <= 0:
        raise ConfigError("data.holdout", f"must be positive (a fraction < 1 or a count >= 1), got {cfg.data.holdout}")
    if cfg.bugs.no_pad_mask and cfg.data.packing:
        raise ConfigError("bugs.no_pad_mask", "packed rows have no padding to mask; the bug is about "
                          "variable-length batches: set data.packing=false")
    _one_of(cfg, "schedule.decay", ("cosine", "constant"))
    _one_of(cfg, "tokenizer.kind", ("bpe", "gpt2"))
    _one_of(cfg, "train.device", ("auto", "cpu", "cuda"))
    _one_of(cfg, "train.precision", ("auto", "fp32", "bf16"))
    if str(cfg.train.compile).lower() not in ("auto", "true", "false"):
        raise ConfigError("train.compile", f"must be one of auto, true, false; got {cfg.train.compile!r}")
    _one_of(cfg, "train.compile_mode", (None, "default", "reduce-overhead", "max-autotune"))
    _one_of(cfg, "train.loss", ("auto", "dense", "chunked", *LOSS_PACKAGES))
    package = LOSS_PACKAGES.get(cfg.train.loss)
    if package and importlib.util.find_spec(package) is None:
        raise ConfigError("train.loss", f"{cfg.train.loss} needs the {package} package, which is not installed "
                          "(an optional extra, for CUDA; see docs/speed.md)")
    _one_of(cfg, "train.attention", ("auto", "cudnn", "flash", "efficient", "math"))
    _one_of(cfg, "logger.kind", ("none", "wandb"))
    _one_of(cfg, "logger.mode", (None, "online", "offline", "disabled"))


def gpt_config(cfg: DictConfig, vocab_size: int) -> GPTConfig:
    from lmlab.model import GPTConfig

    m = cfg.model
    return GPTConfig(vocab_size=vocab_size, d_model=m.d_model, n_heads=m.n_heads, n_layers=m.n_layers,
                     d_ff=ModelConfig.d_ff(m), max_seq_len=m.max_seq_len, dropout=m.dropout)


def to_container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
