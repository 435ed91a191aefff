"""Bad input, as a user types it: one line naming the problem, a non-zero exit, no traceback, and
nothing already written destroyed (each case runs in a copy of an interrupted run's dir)."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.data import tokens
from tests.conftest import CORPUS, REPO, TEST_ENV, TINY, compose_config, corpus_lines

SHRINK = [*TINY, "eval.max_batches=2", "eval.sample_tokens=0", "logger=none", "train.max_steps=2"]
BASE = [*CORPUS, *SHRINK]

# (id, command-line arguments, what the one line must say). {x} are paths the `world` fixture makes.
# A case that picks its own data= runs without the embedded corpus's; data=wikitext2's cases read
# folders in WikiText's layout that `world` writes, to check the WikiText reader's messages.
CASES = [
    ("unknown group option", ["model=optionB"],
     "Could not find 'model/optionB'; Available options in 'model': mini, optionA, optionC, small, tiny"),
    ("unknown data option", ["data=wikitext5"],
     "Could not find 'data/wikitext5'; Available options in 'data': hub, kjv, text, wikitext103, wikitext2, wikitext2_pool"),
    ("misspelled key", ["model.n_headz=4"], "Could not override 'model.n_headz'; Key 'n_headz' not in 'ModelConfig'"),
    ("misspelled group", ["trian.max_steps=5"], "Key 'trian' not in 'Config'"),
    ("wrong type", ["train.batch_size=eight"], "Value 'eight' of type 'str' could not be converted to Integer"),
    ("float for an int", ["train.max_steps=1.5"], "train.max_steps=1.5; Value '1.5' of type 'float'"),
    ("wrong type bool", ["data.packing=maybe"], "Value 'maybe' is not a valid bool"),
    ("unparsable override", ["train.max_steps=[1,2"], "cannot parse the override 'train.max_steps=[1,2'"),
    ("heads do not divide d_model", ["model.n_heads=3"], "model.n_heads: d_model=32 is not divisible by n_heads=3"),
    ("zero d_model", ["model.d_model=0"], "model.d_model: must be positive, got 0"),
    ("negative layers", ["model.n_layers=-1"], "model.n_layers: must be positive, got -1"),
    ("zero context", ["model.max_seq_len=0"], "model.max_seq_len: must be positive, got 0"),
    ("zero d_ff ratio", ["model.d_ff_ratio=0"], "model.d_ff_ratio: must be positive"),
    ("zero batch", ["train.batch_size=0"], "train.batch_size: must be positive, got 0"),
    ("negative steps", ["train.max_steps=-5"], "train.max_steps: must be positive, got -5"),
    ("zero tokens", ["train.max_tokens=0"], "train.max_tokens: must be positive, got 0"),
    ("no training limit", ["train.max_steps=null"], "train.max_steps: set train.max_steps, train.max_tokens or train.max_flops"),
    ("zero grad accumulation", ["train.grad_accum=0"], "train.grad_accum: must be positive"),
    ("zero checkpoint cadence", ["train.checkpoint_every=0"], "train.checkpoint_every: must be positive"),
    ("keep no checkpoint", ["train.keep_checkpoints=0"], "train.keep_checkpoints: must be positive"),
    ("dropout of 1.5", ["model.dropout=1.5"], "model.dropout: must be in [0, 1), got 1.5"),
    ("negative warmup", ["schedule.warmup_steps=-1"], "schedule.warmup_steps: must be >= 0, got -1"),
    ("unknown decay", ["schedule.decay=linear"], "schedule.decay: must be one of cosine, constant; got 'linear'"),
    ("unknown device", ["train.device=tpu"], "train.device: must be one of auto, cpu, cuda; got 'tpu'"),
    ("tiny vocabulary", ["tokenizer.vocab_size=100"], "tokenizer.vocab_size: must be at least 260"),
    ("eval stride above context", ["eval.stride=64"], "eval.stride: must be <= model.max_seq_len=32"),
    ("missing data dir", ["data=wikitext2", "data.local_dir={tmp}/nope"], "data.local_dir={tmp}/nope is not a directory"),
    ("data dir is a file", ["data=wikitext2", "data.local_dir={tmp}/a_file"], "data.local_dir={tmp}/a_file is not a directory"),
    ("wrong layout", ["data=wikitext2", "data.local_dir={tmp}/wrong_layout"], "has no train/validation/test split: expected wiki."),
    ("a split missing", ["data=wikitext2", "data.local_dir={tmp}/no_test"], "has no test split"),
    ("empty split", ["data=wikitext2", "data.local_dir={tmp}/empty_valid"], "the validation split is empty"),
    ("hub corpus without a dataset id", ["data=hub"], "data.hub_id: data=hub needs a dataset: set data.hub_id=ID"),
    ("text corpus without a folder", ["data=text", "data.local_dir=null"], "data.local_dir: data=text reads a local folder"),
    ("text corpus folder without text", ["data=text", "data.local_dir={tmp}/wrong_layout"],
     "data.local_dir={tmp}/wrong_layout holds no .txt or .jsonl file"),
    ("non-UTF-8 text", ["data=wikitext2", "data.local_dir={tmp}/latin1"], "wiki.train.raw is not UTF-8 text (invalid continuation byte at byte"),
    ("batch larger than the data", ["train.batch_size=100000"], "train.batch_size: train.batch_size=100000 is larger than the"),
    ("missing checkpoint", ["train.resume={tmp}/nope.pt"], "no checkpoint at {tmp}/nope.pt"),
    ("corrupted checkpoint", ["train.resume={tmp}/junk.pt"], "{tmp}/junk.pt is not an lmlab checkpoint"),
    ("every checkpoint in the run dir torn", ["hydra.run.dir={tmp}/torn_run"], "no readable checkpoint in {tmp}/torn_run/checkpoints"),
    ("resume into a different model", ["model.d_model=64"], "the model differs in d_model=32 in the checkpoint, 64 now; d_ff=64"),
    ("max_seq_len above the checkpoint's positions", ["model.max_seq_len=64"], "max_seq_len=32 in the checkpoint, 64 now"),
    ("unwritable output dir", ["hydra.run.dir={tmp}/a_file/run"], "cannot write or read {tmp}/a_file/run: Not a directory"),
    ("generation prompt longer than the context", ["-m", "lmlab.generate", "checkpoint={seeded}/checkpoints/last.pt",
                                                    "prompt=" + " the" * 40], "exceeds the model's context of max_seq_len=32"),
    ("generation from a corrupted checkpoint", ["-m", "lmlab.generate", "checkpoint={tmp}/junk.pt", "prompt= The"],
     "{tmp}/junk.pt is not an lmlab checkpoint"),
]


def files(folder: Path) -> dict[str, str]:
    """sha256 of every file under folder but Hydra's own (.hydra/, the job log), which it rewrites."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log"}


def messages(stderr: str) -> list[str]:
    return [line for line in stderr.replace("\r", "\n").splitlines()
            if line.strip() and not re.match(r"[\w ]+: +\d+%\|", line)]


@pytest.fixture(scope="module")
def world(tmp_path_factory, cache_dir):
    tmp = tmp_path_factory.mktemp("bad-input")
    env = {**os.environ, **TEST_ENV, "LMLAB_CACHE_DIR": str(cache_dir)}
    # An interrupted run: checkpoints and metrics, no summary. Every case must leave it as it was.
    seeded = tmp / "seeded"
    r = subprocess.run([sys.executable, "-m", "lmlab", *BASE, "train.checkpoint_every=1", f"hydra.run.dir={seeded}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    shutil.copytree(seeded, tmp / "finished")
    (seeded / "summary.json").unlink()

    (tmp / "a_file").write_text("not a folder\n")
    (tmp / "wrong_layout").mkdir()
    (tmp / "wrong_layout" / "README.md").write_text("train.txt valid.txt test.txt\n")
    head = "".join(corpus_lines(200)).encode()
    layouts = {"no_test": {"train": head, "valid": head},
               "empty_valid": {"train": head, "valid": b" \n", "test": head},
               "latin1": {"train": head + "café\n".encode("latin-1"), "valid": head, "test": head}}
    for name, splits in layouts.items():
        (tmp / name).mkdir()
        for split, data in splits.items():
            (tmp / name / f"wiki.{split}.raw").write_bytes(data)
    (tmp / "junk.pt").write_bytes(b"PK\x03\x04 this is not a checkpoint")
    (tmp / "torn_run" / "checkpoints").mkdir(parents=True)
    for name in ("last.pt", "step-0000004.pt"):
        (tmp / "torn_run" / "checkpoints" / name).write_bytes(os.urandom(2000))
    return {"tmp": tmp, "seeded": seeded, "env": env}


@pytest.mark.parametrize("args,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_destroys_nothing(world, cache_dir, tmp_path, args, expected):
    paths = {"tmp": world["tmp"], "seeded": world["seeded"]}
    args = [a.format(**paths) for a in args]
    expected = expected.format(**paths)
    run_dir = tmp_path / "run"
    shutil.copytree(world["seeded"], run_dir)
    if args[0] == "-m":  # another entry point: python -m lmlab.generate ...
        prog, command = args[1], args
    else:  # a case's own hydra.run.dir comes later, so it wins
        own_data = any(a.startswith("data=") for a in args)
        prog, command = "lmlab", ["-m", "lmlab", *(SHRINK if own_data else BASE), f"hydra.run.dir={run_dir}", *args]
    guarded = [run_dir, world["tmp"], cache_dir]
    before = [files(d) for d in guarded]

    r = subprocess.run([sys.executable, *command], cwd=REPO, env=world["env"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    lines = messages(r.stderr)
    assert len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith(f"{prog}: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in r.stderr + r.stdout
    after = [files(d) for d in guarded]
    for old, new in zip(before, after):
        assert {k: new.get(k) for k in old} == old  # new files may appear (a failed summary); none changed


def test_corrupted_token_cache_is_detected_and_rebuilt(world, cache_dir, tmp_path):
    own_cache = tmp_path / "cache"
    shutil.copytree(cache_dir, own_cache)
    cfg = compose_config([*CORPUS, *TINY, f"data.cache_dir={own_cache}"])
    path = tokens.cache_dir(cfg.data, cfg.tokenizer) / "train.bin"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum can tell
    path.write_bytes(bytes(data))
    r = subprocess.run([sys.executable, "-m", "lmlab", *BASE, f"data.cache_dir={own_cache}",
                        f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, env=world["env"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "is corrupted (checksum mismatch); rebuilding it" in r.stdout
    meta = json.loads(path.with_suffix(".json").read_text())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == meta["sha256"] and path.stat().st_size == 2 * meta["n_tokens"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "done"


def test_a_failed_relaunch_keeps_a_finished_runs_summary(world, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(world["tmp"] / "finished", run_dir)
    before = files(run_dir)
    r = subprocess.run([sys.executable, "-m", "lmlab", *BASE, "train.batch_size=100000", f"hydra.run.dir={run_dir}"],
                       cwd=REPO, env=world["env"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "train.batch_size" in r.stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "done"
    assert {k: files(run_dir).get(k) for k in before} == before
