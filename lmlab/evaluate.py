"""`python -m lmlab.evaluate checkpoint=PATH [data=... data.local_dir=...] [split=test] [eval.stride=...]
[eval.common_window=...] [mode=train] [seed=N] [out=FILE.json]` scores any checkpoint on any split of any
corpus the `data` group loads, tokenized with the checkpoint's own tokenizer; the run's own corpus
and windows unless overrides name others. It prints the metrics a run's summary.json holds, under the same
keys (test_loss, test_ppl, test_word_ppl, test_bpb; val_* for split=validation), and with out=
writes them with the scores (test_scores.json's content) under "scores". mode=train scores with
dropout on, as the seed's evaluation did (bugs.eval_in_train_mode), with no training; its masks
are drawn from `seed` (default: the checkpoint's train.seed), so the same command scores the same.
(torch and the scoring engine, lmlab.scoring, are imported once the arguments are read: `--help`
needs neither.)
"""
from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import MISSING

PREFIXES = {"train": "train", "validation": "val", "test": "test"}  # a split's metrics keys, as in summary.json


@dataclass
class EvaluateConfig:
    checkpoint: str = MISSING
    split: str = "test"  # train | validation | test
    mode: str = "eval"  # eval | train (dropout on: the seed's bug)
    seed: Optional[int] = None  # mode=train: the dropout masks' seed; null: the checkpoint's train.seed
    out: Optional[str] = None  # also write the metrics and scores to this JSON file


def tokenized_split(tokenizer, data_cfg, split: str, own_corpus: bool = True) -> tuple:
    """`split` of the corpus `data_cfg` names, as one token stream in `tokenizer`'s ids (each
    document ended by EOS, as the token cache writes it), with its word and byte counts; and what
    was read, in words. The run's own corpus is split as its training carved it; any other text is
    scored whole where it has no such split (sources.text_to_score)."""
    import numpy as np

    from lmlab.data import Split
    from lmlab.data.sources import split_text, text_to_score
    from lmlab.data.tokens import token_dtype, write_tokens

    text, what = (split_text(data_cfg, split), f"the run's {split} split") if own_corpus else \
        text_to_score(data_cfg, split)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{split}.bin"
        write_tokens(tokenizer, text.documents, path, split)
        tokens = np.fromfile(path, dtype=token_dtype(tokenizer.vocab_size))
    return Split(split, tokens, len(text.documents), text.n_words, text.n_bytes), what


def run_config(args: EvaluateConfig, overrides: list[str], run: dict):
    """The trainer's config composed from `overrides`, with the checkpoint's run's corpus (its
    `data` node) and windows (eval.stride, eval.common_window) where no override names them."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from lmlab.errors import ConfigError
    from lmlab.validation import validate

    with initialize_config_module(config_module="lmlab.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    named = {o.lstrip("+~").split("=")[0] for o in overrides}
    if not any(key.split(".")[0] == "data" for key in named):
        cfg.data = OmegaConf.merge(cfg.data, run["data"])
    for key in ("stride", "common_window"):
        if f"eval.{key}" not in named:
            cfg.eval[key] = run.get("eval", {}).get(key)
    cfg.model.max_seq_len = run["model"]["max_seq_len"]  # the windows' limit: the checkpoint's context
    validate(cfg)
    if args.split not in PREFIXES:
        raise ConfigError("split", f"must be one of {', '.join(PREFIXES)}; got {args.split!r}")
    if args.mode not in ("eval", "train"):
        raise ConfigError("mode", f"must be eval or train; got {args.mode!r}")
    return cfg


def main(argv: list[str] | None = None) -> dict:
    from lmlab.cli import HELP_FLAGS, parse_key_values
    from lmlab.errors import exit_bad_input, user_errors

    argv = sys.argv[1:] if argv is None else argv
    own = [a for a in argv if a.split("=")[0] in EvaluateConfig.__dataclass_fields__ or a in HELP_FLAGS]
    try:
        args = parse_key_values(EvaluateConfig, own, verbatim=("checkpoint", "out"), doc=__doc__)
        from lmlab.checkpoint import load_model
        from lmlab.runtime import resolve_runtime
        from lmlab.scoring import evaluate, score_split

        model, tokenizer, ckpt = load_model(args.checkpoint)
        cfg = run_config(args, [a for a in argv if a not in own], ckpt["config"])
        runtime = resolve_runtime(cfg.train, model.cfg.d_model)
        model.to(runtime.device)
        own_corpus = not any(a.lstrip("+~").split("=")[0].split(".")[0] == "data" for a in argv if a not in own)
        split, what = tokenized_split(tokenizer, cfg.data, args.split, own_corpus)
        print(f"lmlab.evaluate: scored {split.n_docs:,} document{'s' * (split.n_docs != 1)}, "
              f"{len(split.tokens):,} tokens: {what}", file=sys.stderr)

        seed = ckpt["config"]["train"]["seed"] if args.seed is None else args.seed

        def evaluate_rows(rows):
            return evaluate(model, split, rows, tokenizer.eos_id, cfg.eval.batch_size, runtime,
                            ckpt["config"]["model"]["doc_mask"], cfg.eval.max_batches,
                            train_mode=args.mode == "train", dropout_seed=seed)

        metrics, scores = score_split(evaluate_rows, len(split.tokens), model.cfg.max_seq_len, cfg.eval,
                                      PREFIXES[args.split])
    except (ValueError, *user_errors()) as e:
        exit_bad_input(e, "lmlab.evaluate")
    print(json.dumps(metrics, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps({**metrics, "checkpoint": args.checkpoint, "split": args.split,
                                              "mode": args.mode, "scores": scores}), encoding="utf-8")
    return metrics


if __name__ == "__main__":
    main()
