"""The typed config schema: one dataclass per subsystem, which conf/*.yaml fill in.

lmlab.resolvers registers it in Hydra's ConfigStore, so a typo in a key or a wrongly typed value is
rejected by OmegaConf when Hydra composes; lmlab.validation adds the cross-field checks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf


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
    split_on: Optional[str] = None  # text: a regex that cuts every .txt file into documents (lmlab/data/readers.py)
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
    # Stage 1's peak LRs (a sweep value list). At the seed's scale, 5 a factor 1.5 apart centred on the
    # seed's constant 3e-4: a factor-2 grid biased arm differences by up to 0.015 nats (docs/study.md).
    lr_grid: str = "1.33e-4,2e-4,3e-4,4.5e-4,6.75e-4"
    # The baseline's training FLOPs (lmlab.flops: its FLOPs per token x train.max_tokens), the
    # budget of the equal-compute arms (size_compute, ratio_compute): model=small at scale=seed.
    max_flops: float = 1.16253523968e15
    # The `longer` arm's training tokens: the training-length factor's second value beside the
    # scale's own budget (at the seed's scale 250M against the seed's 40.96M; scale=wikitext103 runs
    # every job at it).
    long_tokens: int = 250_000_000
    # The analysis, fixed before any run (sweeps/rootcause.yaml declares it; the report applies it,
    # lmlab/report/analysis.py): an effect inside +-margin (nats/token) is none for the study, and
    # `analysis` holds the claims, the variance groups, the level and the power.
    margin: float = 0.02
    analysis: Any = None


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



def gpt_config(cfg: DictConfig, vocab_size: int) -> GPTConfig:
    from lmlab.model import GPTConfig

    m = cfg.model
    return GPTConfig(vocab_size=vocab_size, d_model=m.d_model, n_heads=m.n_heads, n_layers=m.n_layers,
                     d_ff=ModelConfig.d_ff(m), max_seq_len=m.max_seq_len, dropout=m.dropout)


def to_container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
