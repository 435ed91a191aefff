"""Shared fixtures: compose the real config and shrink it; run the CLI as a user would."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from lmlab.resolvers import package_dir

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MINI = SHARED_DATA / "wikitext-2-mini"
WT2_RAW = SHARED_DATA / "wikitext-2-raw"

# Real English text on every machine: the embedded corpus (data=kjv, the King James Bible that installs
# with lmlab). Tests that need only some real text run on it; those that need WikiText's own files,
# titles or word convention read ../shared/data and skip where it is absent (needs_mini, needs_wt2_raw).
CORPUS = ["data=kjv"]

needs_mini = pytest.mark.skipif(not MINI.is_dir(), reason=f"real WikiText not found at {MINI}")
needs_wt2_raw = pytest.mark.skipif(not WT2_RAW.is_dir(), reason=f"real WikiText not found at {WT2_RAW}")

# A model small enough that a CPU trains it in seconds; every test shrinks the real config with it.
TINY = ["model.d_model=32", "model.n_heads=2", "model.n_layers=2", "model.max_seq_len=32",
        "tokenizer.vocab_size=512", "train.batch_size=8", "eval.batch_size=64", "train.log_every=1"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One token cache for the whole session, so the tokenizer is trained once."""
    return tmp_path_factory.mktemp("token-cache")


# Offline and quiet; subprocesses train tiny models, where one thread each is faster than two
# fighting over 2 cores.
TEST_ENV = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
            "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="session", autouse=True)
def offline_env(cache_dir):
    """For the whole session, so that module-scoped fixtures, set up before any function-scoped
    one, start their subprocesses offline and on the session's token cache too."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in TEST_ENV.items():
            patch.setenv(key, value)
        patch.setenv("LMLAB_CACHE_DIR", str(cache_dir))
        yield


def compose_config(overrides: list[str] = (), hydra: bool = False):
    """The real config, as the CLI composes it (with the `hydra` node if asked)."""
    with initialize_config_module(config_module="lmlab.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)


def run_cli(args: list[str], cwd: Path, module: str = "lmlab", timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m lmlab ARGS` in a subprocess, as a user types it, offline (TEST_ENV) even when
    called from a module-scoped fixture, which runs before the autouse `offline_env`."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **TEST_ENV})


def corpus_verses() -> list[dict]:
    """The embedded corpus's records, one a verse: {"citation": "Genesis 1:1", "text": ..., ...}."""
    lines = (Path(package_dir("bible")) / "data" / "kjv.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def corpus_lines(n: int) -> list[str]:
    """The embedded corpus's first `n` documents (verses), a line each: real text for a test that
    lays out files of its own."""
    return [verse["text"] + "\n" for verse in corpus_verses()[:n]]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run of the TINY model trained for a few steps on the embedded corpus, test split scored in
    full: the checkpoint the export and evaluation tests start from."""
    run_dir = tmp_path_factory.mktemp("tiny-run")
    r = run_cli([*CORPUS, *TINY, "train.max_steps=30", "train.eval_every=15", "schedule=none", "schedule.peak_lr=3e-3",
                 "eval.sample_tokens=0", "logger=none", f"hydra.run.dir={run_dir}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir


def newest_step(ckpt_dir: Path) -> int:
    return max((int(p.stem.split("-")[1]) for p in ckpt_dir.glob("step-*.pt")), default=-1)


def kill_when(args: list[str], ready, log: Path, delay: float = 0.0,
              command: tuple[str, ...] = (sys.executable, "-m", "lmlab")) -> None:
    """Start `command ARGS` (offline, TEST_ENV); SIGKILL it and every process it started (torchrun's
    workers too) `delay` seconds after `ready()` first holds."""
    with open(log, "w") as out:
        proc = subprocess.Popen([*command, *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **TEST_ENV}, start_new_session=True)
        try:
            while not ready():
                assert proc.poll() is None, f"ended before it was killed:\n{log.read_text()[-3000:]}"
                time.sleep(0.005)
            time.sleep(delay)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
