"""`python -m lmlab.lmeval checkpoint=PATH`: lmlab's test-split numbers checked by lm-evaluation-harness.

Exports the checkpoint (lmlab.export), scores the run's test split with `lm_eval`'s `hf` model on
two tasks shipped in lmlab/lm_eval_tasks/, and prints one table beside lmlab's own numbers:

  A  lmlab as summary.json reports it: the split as one token stream, non-overlapping windows
     that run across documents, each document's closing EOS scored, WikiText's word count;
  B  lmlab's model on the harness's windows: each document alone after an EOS, a full window of
     context for its last tokens, its EOS not scored;
  C  lm-eval `lmlab_text`: the same documents and counts as A and B, scored by the harness;
  D  lm-eval `lmlab_wikitext` (WikiText runs): the harness's own wikitext task (detokenized text,
     its word count).

B and C differ only in who computes them, so they agree to rounding; A-B is the windows and EOS;
C-D is the text (detokenized) and the word count. Needs the `lmeval` extra (`pip install -e '.[lmeval]'`).
"""
from __future__ import annotations

import math
import sys
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


def lmlab_scores(model, tokens: np.ndarray, eos_id: int, batch_size: int, docs: list[dict]) -> dict[str, Scores]:
    """A and B of the module's table, with lmlab's model, over `tokens` (the documents of `docs`)."""
    from lmlab.data import Split, packed_rows
    from lmlab.evaluate import evaluate

    words, n_bytes = sum(d["n_words"] for d in docs), sum(d["n_bytes"] for d in docs)
    seq_len = model.cfg.max_seq_len
    # B puts an EOS before the first document too, as the harness does (lmlab's stream starts bare).
    with_bos = np.concatenate([[eos_id], tokens]).astype(tokens.dtype)
    streams = {"A": (tokens, packed_rows(len(tokens), seq_len)), "B": (with_bos, harness_rows(with_bos, eos_id, seq_len))}
    out = {}
    for name, (stream, rows) in streams.items():
        nll = evaluate(model, Split(name, stream, len(docs), words, n_bytes), rows, eos_id, batch_size, "cpu").nll
        out[name] = Scores(nll, words, n_bytes)
    return out


def harness_scores(export_dir: Path, checkpoint: str, batch_size: int, limit: int | None, docs: list[dict],
                   tasks: tuple[str, ...]) -> dict[str, Scores]:
    """C and D of the module's table: `lm_eval` with the `hf` model on the shipped tasks."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), metadata={"checkpoint": str(checkpoint), "limit": limit})
    results = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(export_dir), "dtype": "float32"}, tasks=list(tasks),
        task_manager=manager, batch_size=batch_size, device="cpu", log_samples=False, bootstrap_iters=0)
    n_bytes = sum(d["n_bytes"] for d in docs)  # both tasks divide by the original text's bytes
    out = {}
    for label, task in zip("CD", tasks):
        metrics = results["results"][task]
        nll = metrics["bits_per_byte,none"] * math.log(2) * n_bytes
        # The words the task counted, as its word perplexity implies: the harness's count, not ours.
        out[label] = Scores(nll, round(nll / math.log(metrics["word_perplexity,none"])), n_bytes)
    return out


ROWS = {
    "A": "lmlab as in summary.json: one stream, windows across documents, EOS scored",
    "B": "lmlab, the harness's windows: a document at a time after EOS, EOS not scored",
    "C": "lm-eval `lmlab_text`: the same text and counts as lmlab",
    "D": "lm-eval `lmlab_wikitext`: its wikitext task (detokenized text, its word count)",
}


def table(scores: dict[str, Scores]) -> str:
    lines = ["| | what is scored | bits per byte | word perplexity | NLL (nats) | words | bytes |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {k} | {ROWS[k]} | {s.bpb:.5f} | {s.word_ppl:.3f} | {s.nll:.2f} | {s.n_words:,} | {s.n_bytes:,} |"
              for k, s in scores.items()]
    return "\n".join(lines)


def compare(cfg: LmEvalConfig) -> dict[str, Scores]:
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
    tasks = TASKS if corpus_kind(run_cfg.data) == "wikitext" else TASKS[:1]  # D detokenizes WikiText only
    _, splits = load_splits(run_cfg.data, run_cfg.tokenizer)
    tokens = np.asarray(splits["test"].tokens)
    tokens = tokens[:np.flatnonzero(tokens == tokenizer.eos_id)[len(docs) - 1] + 1]  # the first `limit` documents
    return {**lmlab_scores(model, tokens, tokenizer.eos_id, cfg.batch_size, docs),
            **harness_scores(out, str(checkpoint), cfg.batch_size, cfg.limit, docs, tasks)}


def main(argv: list[str] | None = None) -> None:
    from lmlab.checkpoint import CheckpointError
    from lmlab.cli import parse_key_values
    from lmlab.data import DataError
    from lmlab.errors import exit_bad_input

    try:
        cfg = parse_key_values(LmEvalConfig, sys.argv[1:] if argv is None else argv, verbatim=("checkpoint", "out"))
        scores = compare(cfg)
    except (ValueError, CheckpointError, DataError, OSError) as e:
        exit_bad_input(e, "lmlab.lmeval")
    print(table(scores))


if __name__ == "__main__":
    main()
