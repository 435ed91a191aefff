"""docs/findings: how likely each checkpoint finds EOS where a test article really ends.

    python docs/findings/eos_at_article_ends.py \
        outputs/sweeps/rootcause/cpu-study/+variant={baseline,bug_drop_eos},schedule.peak_lr=0.0015,*/checkpoints/best.pt

The run's own test stream (its token cache, each article ended by EOS): at every EOS with a full
window before it, the model reads the max_seq_len tokens before the EOS, as an evaluation window
would hold them, and gives EOS its probability; printed per arm, one mean per seed.
"""
import sys
from collections import defaultdict

import numpy as np
import torch
from omegaconf import OmegaConf

from lmlab import load_model
from lmlab.data import load_splits

p_eos = defaultdict(list)
for path in sys.argv[1:]:
    model, tok, ckpt = load_model(path)
    run = OmegaConf.create(ckpt["config"])
    stream = np.asarray(load_splits(run.data, run.tokenizer)[1]["test"].tokens, dtype=np.int64)
    seq = model.cfg.max_seq_len
    ends = [e for e in np.flatnonzero(stream == tok.eos_id) if e >= seq]
    with torch.no_grad():
        windows = torch.from_numpy(np.stack([stream[e - seq:e] for e in ends]))
        p = torch.softmax(model(windows)[:, -1], -1)[:, tok.eos_id]
    p_eos[path.split("+variant=")[1].split(",")[0]].append(p.mean().item())
for arm, values in p_eos.items():
    print(f"{arm}: mean P(EOS) at the {len(ends)} test article ends, per seed: "
          + ", ".join(f"{v:.1e}" for v in values))
