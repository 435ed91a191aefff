"""`python -m lmlab.lmeval checkpoint=PATH`: lmlab's test-split numbers checked by lm-evaluation-harness.

Exports the checkpoint (lmlab.export), scores the run's test split with `lm_eval`'s `hf` model on
two tasks shipped in lmlab/lm_eval_tasks/, and prints one table beside lmlab's own numbers:

  A  lmlab's own scoring, on the windows of summary.json's test numbers: the split as one token
     stream, windows that run across documents, each document's closing EOS scored, the stream's
     first token not (nothing comes before it);
  B  lmlab's model on the harness's windows: each document alone after an EOS (the first one
     too), a full window of context for its last tokens, no EOS scored;
  C  lm-eval `lmlab_text`: the same documents and counts as A and B, scored by the harness;
  D  lm-eval `lmlab_wikitext` (WikiText runs only): the harness's own wikitext task (detokenized
     text, its word count).

Under the table: C - B, which only rounding should make (the same windows, two programs), and
A - B taken apart: the EOS tokens only A scores, the first token only B scores, and the windows
(the tokens both score, read from different contexts). docs/lm-eval.md explains the rows. Needs
the `lmeval` extra (`pip install -e '.[lmeval]'`).
"""
from __future__ import annotations

import logging
import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from omegaconf import MISSING, DictConfig, OmegaConf

TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"
TASKS = ("lmlab_text", "lmlab_wikitext")


@dataclass
class LmEvalConfig:
    checkpoint: str = MISSING
    out: Optional[str] = None  # the exported model's folder; null: <run dir>/hf beside checkpoints/
    batch_size: int = 16
    limit: Optional[int] = None  # score only the first N test documents (both sides); null: all


@dataclass
class Scores:
    nll: float  # nats, summed over every scored token
    n_words: int
    n_bytes: int

    @property
    def bpb(self) -> float:
        return self.nll / (math.log(2) * self.n_bytes)

    @property
    def word_ppl(self) -> float:
        return math.exp(self.nll / self.n_words)


def run_data_config(checkpoint: str | Path) -> DictConfig:
    """The data config of the run that wrote `checkpoint` (its text and its counting rules)."""
    from lmlab.checkpoint import load_checkpoint

    return OmegaConf.create(load_checkpoint(checkpoint)["config"]["data"])


def scored_documents(data_cfg, limit: int | None = None) -> list[dict]:
    """The test split's documents (the first `limit`) with lmlab's word and byte counts."""
    from lmlab.data.sources import document_words, split_text

    docs = split_text(data_cfg, "test").documents[:limit]
    return [{"page": d, "n_words": document_words(data_cfg, d), "n_bytes": len(d.encode())} for d in docs]


def harness_rows(stream: np.ndarray, eos_id: int, seq_len: int) -> np.ndarray:
    """lm-evaluation-harness's rolling windows (its own `get_rolling_token_windows`) as lmlab rows
    (start, end, score_from) into `stream`, whose documents each follow an EOS: a document's first
    window starts at that EOS, later ones predict seq_len new tokens each, and the last reaches back
    for a full window of context. EOS tokens are never predicted."""
    from lm_eval.utils import get_rolling_token_windows

    eos = np.flatnonzero(stream == eos_id)
    rows = []
    for before, after in zip(eos[:-1], eos[1:]):
        base = before + 1  # the document's first token; windows are computed over positions
        for inputs, predicted in get_rolling_token_windows(list(range(after - base)), prefix_token=-1,
                                                           max_seq_len=seq_len, context_len=1):
            start = before if inputs[0] == -1 else base + inputs[0]
            rows.append((start, base + predicted[-1] + 1, base + predicted[0]))
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def target_rows(rows: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The row of `rows` that scores each of `targets` (stream indices), cut to score that target
    alone from the same context, so with the same NLL. `rows` score disjoint, increasing ranges
    from their score_from on, as lmlab's evaluation windows do."""
    row = np.searchsorted(rows[:, 2], targets, side="right") - 1
    return np.stack([rows[row, 0], targets + 1, targets], axis=1).reshape(-1, 3)


@dataclass
class Gap:
    """A - B in nats, by what only one of them scores and by where the tokens both score read from."""
    total: float  # A - B
    eos: float  # A's NLL on the EOS ending each document: B predicts no EOS
    n_eos: int
    first: float  # B's NLL on the stream's first token: A has nothing before it to predict it from
    shared: float  # A's NLL on the tokens both score
    n_shared: int

    @property
    def windows(self) -> float:
        """The rest: the tokens both score, read from different contexts."""
        return self.total - self.eos + self.first


def lmlab_scores(model, tokens: np.ndarray, eos_id: int, batch_size: int, docs: list[dict],
                 stride: int | None) -> tuple[dict[str, Scores], Gap]:
    """A and B of the module's table, with lmlab's model, over `tokens` (the documents of `docs`),
    and what A - B is made of. A's windows are the run's own (eval.stride)."""
    from lmlab.data import Split
    from lmlab.scoring import eval_rows, evaluate

    words, n_bytes = sum(d["n_words"] for d in docs), sum(d["n_bytes"] for d in docs)
    seq_len = model.cfg.max_seq_len
    # B puts an EOS before the first document too, as the harness does (lmlab's stream starts bare).
    with_bos = np.concatenate([[eos_id], tokens]).astype(tokens.dtype)

    def score(stream: np.ndarray, rows: np.ndarray):
        return evaluate(model, Split("test", stream, len(docs), words, n_bytes), rows, eos_id, batch_size, "cpu")

    a_rows = eval_rows(len(tokens), seq_len, stride)
    a, b = score(tokens, a_rows), score(with_bos, harness_rows(with_bos, eos_id, seq_len))
    eos = score(tokens, target_rows(a_rows, np.flatnonzero(tokens == eos_id)))
    first = score(with_bos, np.array([[0, 2, 1]]))
    gap = Gap(a.nll - b.nll, eos.nll, eos.n_tokens, first.nll, a.nll - eos.nll, a.n_tokens - eos.n_tokens)
    return {"A": Scores(a.nll, words, n_bytes), "B": Scores(b.nll, words, n_bytes)}, gap


def hf_model(export_dir: Path, batch_size: int):
    """lm-eval's `hf` model on the export. HFLM.loglikelihood_rolling passes disable_tqdm=False to
    every batch it scores (lm-eval 0.4.13), which printed one progress bar per batch; here only its
    bar over the documents is left."""
    from lm_eval.models.huggingface import HFLM

    class OneBarHFLM(HFLM):
        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
            return super()._loglikelihood_tokens(requests, disable_tqdm=True, override_bs=override_bs)

    return OneBarHFLM(pretrained=str(export_dir), dtype="float32", batch_size=batch_size, device="cpu")


# Log records that do not apply to lmlab's run, by logger: transformers' warning that a document is
# longer than the model's context (lm-eval cuts it into windows that fit), and lm-eval's advice to
# task authors on passing `--metadata` (lmlab passes it).
NOT_APPLICABLE = {"transformers.tokenization_utils_base": "Token indices sequence length is longer than",
                  "lm_eval.api.task": "Custom kwargs can be passed to `--metadata`"}


@contextmanager
def quiet_libraries():
    """transformers without its progress bars (writing and loading the export) and without the
    NOT_APPLICABLE records; errors and every other warning still show."""
    from transformers.utils import logging as hf_logging

    filters = {name: (lambda record, text=text: text not in record.getMessage()) for name, text in NOT_APPLICABLE.items()}
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    for name, keep in filters.items():
        logging.getLogger(name).addFilter(keep)
    try:
        yield
    finally:
        for name, keep in filters.items():
            logging.getLogger(name).removeFilter(keep)
        if bars:
            hf_logging.enable_progress_bar()


def harness_scores(export_dir: Path, checkpoint: str, batch_size: int, limit: int | None, docs: list[dict],
                   tasks: tuple[str, ...]) -> dict[str, Scores]:
    """C and D of the module's table: `lm_eval` with the `hf` model on the shipped tasks."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), metadata={"checkpoint": str(checkpoint), "limit": limit})
    results = lm_eval.simple_evaluate(model=hf_model(export_dir, batch_size), tasks=list(tasks), task_manager=manager,
                                      log_samples=False, bootstrap_iters=0)
    n_bytes = sum(d["n_bytes"] for d in docs)  # both tasks divide by the original text's bytes
    out = {}
    for label, task in zip("CD", tasks):
        metrics = results["results"][task]
        nll = metrics["bits_per_byte,none"] * math.log(2) * n_bytes
        # The words the task counted, as its word perplexity implies: the harness's count, not ours.
        out[label] = Scores(nll, round(nll / math.log(metrics["word_perplexity,none"])), n_bytes)
    return out


@dataclass
class Comparison:
    scores: dict[str, Scores]  # A, B, C and, on WikiText, D
    gap: Gap
    limit: int | None
    stride: int | None  # the run's eval.stride: A's windows
    corpus: str  # the run's data.kind


def row_labels(limit: int | None, stride: int | None) -> dict[str, str]:
    windows = f"windows sliding by {stride}" if stride else "non-overlapping windows"
    scope = "as in summary.json" if limit is None else f"the first {limit} documents only (summary.json: all)"
    return {"A": f"lmlab, {scope}: one stream, {windows} across documents, EOS scored",
            "B": "lmlab, the harness's windows: a document at a time after EOS, EOS not scored",
            "C": "lm-eval `lmlab_text`: the same text and counts as lmlab",
            "D": "lm-eval `lmlab_wikitext`: its wikitext task (detokenized text, its word count)"}


def table(scores: dict[str, Scores], labels: dict[str, str]) -> str:
    lines = ["| | what is scored | bits per byte | word perplexity | NLL (nats) | words | bytes |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {k} | {labels[k]} | {s.bpb:.5f} | {s.word_ppl:.3f} | {s.nll:.2f} | {s.n_words:,} | {s.n_bytes:,} |"
              for k, s in scores.items()]
    return "\n".join(lines)


def report(c: Comparison) -> str:
    """The table, C - B, A - B taken apart, and why D is missing where it is."""
    s, gap = c.scores, c.gap
    lines = [table(s, row_labels(c.limit, c.stride)), "",
             f"C - B: {s['C'].nll - s['B'].nll:+.1e} nats, {s['C'].bpb - s['B'].bpb:+.1e} bits per byte "
             "(the same windows, scored by lm-eval through transformers and by lmlab)",
             f"A - B: {gap.total:+.2f} nats =",
             f"  {gap.eos:+10.2f}  the {gap.n_eos:,} EOS ending documents, scored by A only "
             f"({gap.eos / gap.n_eos:.2f} nats each; the other tokens {gap.shared / gap.n_shared:.2f})",
             f"  {-gap.first:+10.2f}  the stream's first token, scored by B only (after its EOS)",
             f"  {gap.windows:+10.2f}  the windows: the {gap.n_shared:,} tokens both score, read from different contexts"]
    if "D" not in s:
        lines.append(f"D: not scored: lm-eval's wikitext task undoes WikiText's tokenization (` @-@ `, ` , `), "
                     f"and this run's corpus is data.kind={c.corpus}")
    return "\n".join(lines)


def compare(cfg: LmEvalConfig) -> Comparison:
    from lmlab.checkpoint import load_model
    from lmlab.data import load_splits
    from lmlab.data.sources import corpus_kind
    from lmlab.export import export_loaded

    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ValueError("lm-evaluation-harness is not installed: pip install -c constraints-cpu.txt -e '.[lmeval]'") from None
    checkpoint = Path(cfg.checkpoint)
    out = Path(cfg.out) if cfg.out else checkpoint.resolve().parent.parent / "hf"
    model, tokenizer, ckpt = load_model(checkpoint)
    export_loaded(model, tokenizer, ckpt, out, checkpoint)
    run_cfg = OmegaConf.create(ckpt["config"])
    docs = scored_documents(run_cfg.data, cfg.limit)
    corpus = corpus_kind(run_cfg.data)
    tasks = TASKS if corpus == "wikitext" else TASKS[:1]  # D detokenizes WikiText only
    stride = OmegaConf.select(run_cfg, "eval.stride", default=None)
    _, splits = load_splits(run_cfg.data, run_cfg.tokenizer)
    tokens = np.asarray(splits["test"].tokens)
    tokens = tokens[:np.flatnonzero(tokens == tokenizer.eos_id)[len(docs) - 1] + 1]  # the first `limit` documents
    scores, gap = lmlab_scores(model, tokens, tokenizer.eos_id, cfg.batch_size, docs, stride)
    scores.update(harness_scores(out, str(checkpoint), cfg.batch_size, cfg.limit, docs, tasks))
    return Comparison(scores, gap, cfg.limit, stride, corpus)


def main(argv: list[str] | None = None) -> None:
    from lmlab.cli import parse_key_values
    from lmlab.errors import CheckpointError, DataError, exit_bad_input

    try:
        cfg = parse_key_values(LmEvalConfig, sys.argv[1:] if argv is None else argv, verbatim=("checkpoint", "out"),
                               doc=__doc__)
        with quiet_libraries():
            comparison = compare(cfg)
    except (ValueError, CheckpointError, DataError, OSError) as e:
        exit_bad_input(e, "lmlab.lmeval")
    print(report(comparison))


if __name__ == "__main__":
    main()
