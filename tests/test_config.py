"""Every group combination composes; bad values fail before any compute, in one line."""
import itertools

import pytest
from hydra.errors import ConfigCompositionException

from lmlab.config import ModelConfig
from lmlab.errors import ConfigError
from lmlab.validation import validate
from tests.conftest import REPO, compose_config, run_cli

MODELS = {"small": (256, 4, 4, 512, 256), "optionA": (512, 8, 6, 2048, 512), "optionC": (768, 12, 12, 3072, 1024)}


@pytest.mark.parametrize("model,data,schedule", list(itertools.product(MODELS, ["wikitext2", "wikitext103"],
                                                                       ["warmup", "none"])))
def test_every_combination_composes(model, data, schedule):
    cfg = compose_config([f"model={model}", f"data={data}", f"schedule={schedule}"])
    validate(cfg)
    m = cfg.model
    assert (m.d_model, m.n_heads, m.n_layers, ModelConfig.d_ff(m), m.max_seq_len) == MODELS[model]
    assert cfg.data.hub_config == {"wikitext2": "wikitext-2-raw-v1", "wikitext103": "wikitext-103-raw-v1"}[data]
    assert (cfg.schedule.warmup_steps, cfg.schedule.peak_lr) == {"warmup": (2000, 6e-4), "none": (0, 3e-4)}[schedule]


def test_defaults_are_the_seed_setup_with_warmup():
    cfg = compose_config()
    assert (cfg.model.name, cfg.data.name, cfg.schedule.name, cfg.tokenizer.kind) == ("small", "wikitext2", "warmup", "bpe")
    assert cfg.data.local_dir is None


def test_d_ff_follows_the_ratio():
    cfg = compose_config(["model=optionA", "model.d_ff_ratio=8"])
    assert ModelConfig.d_ff(cfg.model) == 4096


@pytest.mark.parametrize("override,key", [
    ("model.n_heads=5", "model.n_heads"),
    ("model.d_model=0", "model.d_model"),
    ("model.n_layers=-1", "model.n_layers"),
    ("model.dropout=1.5", "model.dropout"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.max_steps=null", "train.max_steps"),
    ("schedule.warmup_steps=-5", "schedule.warmup_steps"),
    ("schedule.decay=linear", "schedule.decay"),
    ("train.device=tpu", "train.device"),
    ("tokenizer.vocab_size=100", "tokenizer.vocab_size"),
    ("train.max_flops=-1e15", "train.max_flops"),
    ("eval.common_window=512", "eval.common_window"),  # longer than model=small's context of 256
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose_config([override]))


@pytest.mark.parametrize("override", ["model.n_headz=4", "model.n_heads=four", "model=optionB"])
def test_typos_and_wrong_types_fail_at_composition(override):
    with pytest.raises(ConfigCompositionException):
        compose_config([override])


def test_cli_bad_value_is_one_line_and_nonzero(tmp_path):
    r = run_cli(["model.n_heads=5", f"hydra.run.dir={tmp_path}"], cwd=REPO)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "lmlab: error: model.n_heads: d_model=256 is not divisible by n_heads=5"]


def test_cli_missing_local_dir_is_one_line(tmp_path):
    r = run_cli([f"data.local_dir={tmp_path / 'nope'}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.local_dir" in lines[0] and "not a directory" in lines[0]


def test_cli_offline_hub_says_how_to_use_local_files(tmp_path):
    r = run_cli([f"hydra.run.dir={tmp_path}"], cwd=REPO)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "offline" in lines[0] and "data.local_dir=" in lines[0]


def test_long_job_dirnames_fit_a_file_name_and_stay_unique():
    from lmlab.resolvers import job_dirname

    short = "model.d_ff_ratio=4,train.seed=1"
    assert job_dirname(short) == short
    long_a, long_b = ",".join(f"key{i}=value" for i in range(40)) + ",seed=0", ",".join(
        f"key{i}=value" for i in range(40)) + ",seed=1"
    a, b = job_dirname(long_a), job_dirname(long_b)
    assert len(a.encode()) <= 200 and len(b.encode()) <= 200
    assert a != b and a == job_dirname(long_a)  # unique, and the same on a relaunch


def test_cli_without_network_fails_fast_in_one_line(tmp_path):
    """Not told it is offline, with the hub unreachable (HF_ENDPOINT on a closed local port): one
    line, from the hub check, where datasets alone retries for ~30 s."""
    import os
    import subprocess
    import sys

    from tests.conftest import TEST_ENV

    env = {**os.environ, **TEST_ENV, "HF_ENDPOINT": "http://127.0.0.1:9"}
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        env.pop(key)
    r = subprocess.run([sys.executable, "-m", "lmlab", f"hydra.run.dir={tmp_path}", "logger=none"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "the hub is unreachable" in lines[0] and "python -m lmlab preset=quick" in lines[0] and "data.local_dir=" in lines[0]


def test_an_unreachable_hub_is_answered_before_datasets_is_asked(monkeypatch):
    """What makes the failure fast: `datasets.load_dataset`, which retries, is never called."""
    import datasets
    from huggingface_hub import constants

    from lmlab.data import DataError
    from lmlab.data.readers import load_dataset

    calls = []
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: calls.append(args))
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(key)
    with pytest.raises(DataError, match="the hub is unreachable"):
        load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1")
    assert calls == []
