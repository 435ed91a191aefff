"""Two jobs that need the same token cache at once: one builds it, the other waits and reads it."""
import hashlib
import json
import subprocess
import sys

import numpy as np
from omegaconf import OmegaConf

from lmlab.data import load_splits
from tests.conftest import CORPUS, REPO, compose_config

BUILD = """
import hashlib, json, logging, sys
import numpy as np
from omegaconf import OmegaConf
from lmlab.data import load_splits
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
data = OmegaConf.create(sys.argv[1])
tok, splits = load_splits(data, OmegaConf.create({"kind": "bpe", "vocab_size": 512}))
print(json.dumps({name: hashlib.sha256(np.asarray(s.tokens).tobytes()).hexdigest() for name, s in splits.items()}))
"""


def test_two_processes_building_one_cache_build_it_once(tmp_path):
    cache = tmp_path / "cache"
    data = compose_config([*CORPUS, f"data.cache_dir={cache}"]).data
    procs = [subprocess.Popen([sys.executable, "-c", BUILD, OmegaConf.to_yaml(data, resolve=True)], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    hashes = [json.loads(out) for out, _ in outs]
    assert hashes[0] == hashes[1] and set(hashes[0]) == {"train", "validation", "test"}
    # Each split was tokenized by one of the two, never by both.
    assert sum(err.count("tokenizing the") for _, err in outs) == 3

    # What they left is whole: it loads (checksums verified) and no temporary file is left over.
    folder = next(cache.glob("*/bpe512"))
    assert not [p.name for p in folder.iterdir() if ".tmp" in p.name]
    _, splits = load_splits(data, OmegaConf.create({"kind": "bpe", "vocab_size": 512}))
    assert {n: hashlib.sha256(np.asarray(s.tokens).tobytes()).hexdigest() for n, s in splits.items()} == hashes[0]
