"""The cross-field checks a composed config passes before any data is loaded or any compute runs
(the schema, lmlab.config, already checked each key and type)."""
from __future__ import annotations

import importlib.util
import re

from omegaconf import DictConfig, OmegaConf

from lmlab.config import LOSS_PACKAGES
from lmlab.errors import ConfigError


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
