"""`python -m lmlab.bench`: it times the trainer's own step, and prints and records its table."""
import json
from importlib.util import find_spec
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from lmlab.config import to_container
from lmlab.resolvers import register_configs
from lmlab.data import load_splits
from lmlab.flops import flops_per_token
from lmlab.model import GPT, GPTConfig
from lmlab.step import TrainStep
from lmlab.tracking import Tracker
from tests.conftest import CORPUS, MINI, REPO, TINY, compose_config, needs_mini, run_cli

needs_transformers = pytest.mark.skipif(find_spec("transformers") is None, reason="the HF baseline needs transformers")
SHORT = ["bench.warmup_steps=1", "bench.steps=2", "bench.windows=2"]


@pytest.fixture
def bench_schema():
    import lmlab.conf  # noqa: F401  its first import registers the trainer's schema: done before the bench's replaces it

    register_configs(bench=True)
    yield
    register_configs()


def compose_bench(overrides):
    with initialize_config_module(config_module="lmlab.conf", version_base="1.3"):
        return compose(config_name="bench", overrides=list(overrides))


def test_bench_and_trainer_run_the_same_step(monkeypatch, bench_schema, tmp_path):
    from lmlab.bench import bench_step
    from lmlab.config import gpt_config
    from lmlab.train import train

    calls = []
    step_call = TrainStep.__call__
    monkeypatch.setattr(TrainStep, "__call__", lambda self, batches, lr: calls.append(lr) or step_call(self, batches, lr))
    [row] = bench_step(compose_bench([*TINY, *SHORT]))
    assert len(calls) == 1 + 2 * 2  # warm-up, then 2 windows of 2 steps: every step the bench times is a TrainStep
    assert row["tokens_per_s"] > 0 and row["ms_per_step"] == pytest.approx(1e3 * 8 * 32 / row["tokens_per_s"])

    calls.clear()
    cfg = compose_config([*CORPUS, *TINY, "train.max_steps=3", "eval.max_batches=1",
                          "eval.sample_tokens=0", "logger=none"])
    tokenizer, splits = load_splits(cfg.data, cfg.tokenizer)
    model = GPT(gpt_config(cfg, tokenizer.vocab_size))
    tracker = Tracker(tmp_path, cfg.logger, {}, group="g", name="n")
    summary = train(cfg, model, tokenizer, splits, tracker, tmp_path, to_container(cfg))
    assert len(calls) == summary["steps"] == 3


# bench.data builds a cold cache twice, which takes ~3 s on the mini WikiText against ~10 s on the
# whole embedded corpus.
@needs_transformers
@needs_mini
def test_bench_cli_prints_the_table_with_hf_data_path_and_checkpoint(tmp_path):
    out = tmp_path / "bench.jsonl"
    r = run_cli([*TINY, *SHORT, f"data.local_dir={MINI}", "bench.compare=hf", "bench.pairs=1", "bench.data=true",
                 "bench.checkpoint=true", "bench.profile=true", f"bench.out={out}", "train.peak_tflops=0.5",
                 f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, module="lmlab.bench")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| model | shape (d x L, seq x batch, vocab) | device |" in r.stdout
    assert "where a step's CPU time goes" in r.stdout and "matmul" in r.stdout
    row = json.loads(out.read_text())
    assert (row["model"], row["d_model"], row["n_layers"], row["seq"], row["batch"], row["vocab"]) == \
        ("small", 32, 2, 32, 8, 512)
    assert row["ratio"] == pytest.approx(row["tokens_per_s"] / row["hf_tokens_per_s"]) and len(row["ratios"]) == 1
    assert row["precision"] == "fp32" and row["ratio_to"] == "HF fp32"  # tiny: fp32 on every CPU
    n = GPT(GPTConfig(vocab_size=512, d_model=32, n_heads=2, n_layers=2, d_ff=64, max_seq_len=32)).n_params(True)
    assert row["mfu"] == pytest.approx(flops_per_token(n, 32, 512, 2, 32) * row["tokens_per_s"] / 0.5e12)
    assert 0 < row["ckpt_stall_s"] < row["ckpt_write_s"] and row["ckpt_blocking_s"] > 0
    assert row["bpe_encode_mb_s"] > 0 and row["cache_load_s"] > 0
    assert 0 < row["launch_to_first_step_s"] < row["launch_to_exit_1_step_s"]
    assert row["cache_build_ratio"] == pytest.approx(row["cache_build_s"] / row["recipe_build_s"])
    assert row["eval_tokens_per_s"] > 0 and row["loss"] == "dense"  # train.loss=auto on the CPU
    assert 0 <= row["step_mem_gib"] < row["peak_mem_gib"]
    assert "cache_build_ratio=" in r.stdout and "| dense |" in r.stdout


def bench_rows(tmp_path: Path, compare: str, *overrides: str, cwd: Path = REPO) -> tuple:
    """`python -m lmlab.bench bench.compare=COMPARE` on the tiny model, one pair: its result and rows."""
    out = tmp_path / "bench.jsonl"
    r = run_cli([*TINY, *SHORT, f"bench.compare={compare}", "bench.pairs=1", *overrides, f"bench.out={out}",
                 f"hydra.run.dir={tmp_path / 'run'}"], cwd=cwd, module="lmlab.bench")
    assert r.returncode == 0, r.stderr[-3000:]
    return r, [json.loads(line) for line in out.read_text().splitlines()]


@needs_transformers
def test_bench_compares_with_its_own_hf_baseline_on_its_threads_at_both_precisions(tmp_path):
    """From a folder with no ../shared, on train.threads threads (the tests' OMP_NUM_THREADS is 1):
    HF GPT-2 at its own precision (fp32 on the CPU) and at lmlab's (bf16 here) beside it."""
    r, rows = bench_rows(tmp_path, "hf", "train.threads=2", "train.precision=bf16", cwd=tmp_path)
    assert [(row["precision"], row["ratio_to"]) for row in rows] == [("bf16", "HF fp32"), ("bf16", "HF bf16")]
    assert all(row["threads"] == 2 for row in rows)
    for row in rows:
        assert row["ratio"] == pytest.approx(row["tokens_per_s"] / row["hf_tokens_per_s"])
        assert row["eval_ratio"] == pytest.approx(row["eval_tokens_per_s"] / row["tokens_per_s"])
    assert "vs HF fp32" in r.stdout and "vs HF bf16" in r.stdout


def test_bench_compares_the_precisions_each_in_its_own_process(tmp_path):
    r, rows = bench_rows(tmp_path, "precision")
    assert [(row["precision"], row["ratio_to"]) for row in rows] == [("fp32", "fp32"), ("bf16", "fp32")]
    assert rows[1]["ratio"] == pytest.approx(rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"])


def test_bench_compares_the_losses_each_in_its_own_process(tmp_path):
    r, rows = bench_rows(tmp_path, "loss")
    assert [row["loss"] for row in rows] == ["dense", "chunked"]
    assert rows[0]["ratio"] == 1.0 and rows[1]["ratio"] == pytest.approx(rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"])
    assert all(row["peak_mem_gib"] > 0 and row["eval_tokens_per_s"] > 0 for row in rows)
    assert "| dense |" in r.stdout and "| chunked |" in r.stdout and "vs dense" in r.stdout


def test_bench_options_are_checked_before_any_compute(tmp_path):
    for bad, key in (("bench.stepz=3", "stepz"), ("bench.compare=nano", "bench.compare"),
                     ("train.loss=sparse", "train.loss")):
        r = run_cli([bad, f"hydra.run.dir={tmp_path}"], cwd=REPO, module="lmlab.bench")
        assert r.returncode == 2 and key in r.stderr and r.stderr.startswith("lmlab.bench: error:"), r.stderr
