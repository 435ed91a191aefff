"""The README's Findings: how likely each checkpoint finds EOS where a test article really ends.

    python docs/findings/eos_at_article_ends.py \
        outputs/sweeps/rootcause/cpu/*/+variant={baseline,bug_drop_eos},*/checkpoints/best.pt

For each article of wikitext-2-mini's test split but the first, the model reads the 127 tokens
before the article's start (its whole context, as a packed evaluation window would hold them) and
gives EOS its probability; printed per arm, one mean per seed.
"""
import re
import sys
from collections import defaultdict

import torch

from lmlab import load_model

text = open("../shared/data/wikitext-2-mini/wiki.test.raw", encoding="utf-8").read()
starts = [m.start() for m in re.finditer(r"(?<=\n \n \n) = [^=]", text)]  # a title line after two blank lines
p_eos = defaultdict(list)
for path in sys.argv[1:]:
    model, tok, _ = load_model(path)
    with torch.no_grad():
        p = [torch.softmax(model(torch.tensor([tok.encode(text[s - 400:s])[-127:]]))[0, -1], -1)[tok.eos_id].item()
             for s in starts]
    p_eos[path.split("+variant=")[1].split(",")[0]].append(sum(p) / len(p))
for arm, values in p_eos.items():
    print(f"{arm}: mean P(EOS) at the {len(starts)} test article ends, per seed: "
          + ", ".join(f"{v:.1e}" for v in values))
