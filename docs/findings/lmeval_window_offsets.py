"""docs/lm-eval.md: how far row A of `python -m lmlab.lmeval` moves when only its windows move.

    python docs/findings/lmeval_window_offsets.py CHECKPOINT [N_OFFSETS]

Row A scores the run's test stream in non-overlapping windows of max_seq_len that start at token
0. Here the windows start at N_OFFSETS (default 8) evenly spaced offsets instead, the tokens
before the first window scored in one short window of their own, so every variant scores the same
targets from other contexts. Prints the NLL per offset and its spread: what window placement
alone does to A.
"""
import sys

import numpy as np
from omegaconf import OmegaConf

from lmlab import load_model
from lmlab.data import load_splits, packed_rows
from lmlab.scoring import evaluate

model, tok, ckpt = load_model(sys.argv[1])
run = OmegaConf.create(ckpt["config"])
test = load_splits(run.data, run.tokenizer)[1]["test"]
seq = model.cfg.max_seq_len
nlls = []
for offset in np.linspace(0, seq, int(sys.argv[2]) if len(sys.argv) > 2 else 8, endpoint=False).astype(int):
    rows = packed_rows(len(test.tokens) - offset, seq) + offset
    if offset:
        rows = np.concatenate([[[0, offset + 1, 1]], rows])
    result = evaluate(model, test, rows, tok.eos_id, run.eval.batch_size, "cpu")
    nlls.append(result.nll)
    print(f"windows from token {offset:4d}: NLL {result.nll:12.2f} nats over {result.n_tokens:,} tokens")
print(f"spread: max - min {max(nlls) - min(nlls):.2f} nats, standard deviation {np.std(nlls):.2f}")
