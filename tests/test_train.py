"""Trainer: it learns, its evaluation is deterministic, and a CLI run leaves files that reload exactly."""
import json
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lmlab import load_model
from lmlab.config import gpt_config
from lmlab.data import Split, collate, load_splits, packed_rows
from lmlab.scoring import evaluate
from lmlab.model import GPT, GPTConfig
from lmlab.step import batch_loss, make_optimizer
from lmlab.schedule import lr_at
from tests.conftest import CORPUS, REPO, TINY, compose_config, run_cli


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, d_model=32, n_heads=2, n_layers=2, d_ff=64, max_seq_len=32))
    tokens = np.random.default_rng(0).integers(0, 64, 4 * 33)
    batch = collate(tokens, packed_rows(len(tokens), 32)[:4], eos_id=0)
    opt = make_optimizer(model, OmegaConf.create({"weight_decay": 0.0, "beta1": 0.9, "beta2": 0.95}), fused=False)
    for group in opt.param_groups:
        group["lr"] = 3e-3
    first = batch_loss(model, batch, "cpu").item()
    for _ in range(150):
        loss = batch_loss(model, batch, "cpu")
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert first > math.log(64) - 0.5  # starts near uniform over the vocabulary
    assert loss.item() < 0.2  # and memorises the 128 random tokens


def test_eval_is_deterministic_under_dropout_and_restores_train_mode():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, d_model=32, n_heads=2, n_layers=2, d_ff=64, max_seq_len=16, dropout=0.5))
    tokens = np.random.default_rng(1).integers(0, 64, 500)
    split = Split("validation", tokens, 1, 100, 400)
    rows = packed_rows(len(tokens), 16)
    model.train()
    a = evaluate(model, split, rows, 0, 8, "cpu")
    b = evaluate(model, split, rows, 0, 8, "cpu")
    assert model.training
    assert a.nll == b.nll and a.n_tokens == b.n_tokens == 499
    # Dropout is really on in train mode: the same batch scores differently twice.
    batch = collate(tokens, rows[:8], 0)
    assert batch_loss(model, batch, "cpu").item() != batch_loss(model, batch, "cpu").item()
    # Perplexity is exp(total NLL / total tokens) over the split, not a mean of batch perplexities.
    assert a.ppl == pytest.approx(math.exp(a.nll / 499)) and a.word_ppl == pytest.approx(math.exp(a.nll / 100))


def test_schedules():
    warm = OmegaConf.create({"peak_lr": 6e-4, "warmup_steps": 100, "decay": "cosine", "min_lr_ratio": 0.1})
    assert lr_at(0, warm, 1000) == pytest.approx(6e-6)
    assert lr_at(99, warm, 1000) == pytest.approx(6e-4)
    assert lr_at(1000, warm, 1000) == pytest.approx(6e-5)
    none = OmegaConf.create({"peak_lr": 3e-4, "warmup_steps": 0, "decay": "constant", "min_lr_ratio": 1.0})
    assert {lr_at(s, none, 1000) for s in (0, 500, 999)} == {3e-4}


@pytest.mark.parametrize("overrides, warned", [
    (["train.max_steps=300"], True),  # the default schedule's 2000 warmup steps
    (["train.max_steps=null", f"train.max_tokens={300 * 8 * 32}"], True),  # the same horizon, counted in tokens
    (["train.max_steps=300", "schedule.warmup_steps=30"], False),
])
def test_a_warmup_longer_than_half_the_run_is_named_with_its_fix(overrides, warned, tmp_path, caplog):
    import logging

    from lmlab.distributed import Ranks
    from lmlab.tracking import NoRecords
    from lmlab.train import Trainer

    cfg = compose_config([*CORPUS, *TINY, *overrides])
    tokenizer, splits = load_splits(cfg.data, cfg.tokenizer)
    with caplog.at_level(logging.WARNING, logger="lmlab.train"):
        Trainer(cfg, GPT(gpt_config(cfg, tokenizer.vocab_size)), tokenizer, splits, NoRecords(), tmp_path, {}, None,
                Ranks())
    warnings = [r.getMessage() for r in caplog.records if "warmup" in r.getMessage()]
    if warned:
        assert len(warnings) == 1 and "\n" not in warnings[0], warnings
        assert "schedule.warmup_steps=2000" in warnings[0] and "300 planned steps" in warnings[0]
        assert "15% of schedule.peak_lr" in warnings[0] and "schedule.warmup_steps=30 " in warnings[0]
    else:
        assert warnings == []


def test_cli_run_writes_metrics_summary_and_exact_checkpoints(tmp_path):
    run_dir = tmp_path / "run"
    r = run_cli([*CORPUS, *TINY, "train.max_steps=6", "train.eval_every=3",
                 "schedule.warmup_steps=2", f"hydra.run.dir={run_dir}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 3, 6]
    assert set(metrics[-1]) >= {"step", "tokens", "train_loss", "val_loss", "val_ppl", "lr", "tokens_per_s"}
    assert metrics[-1]["tokens"] == 6 * 8 * 32 and metrics[-1]["val_ppl"] < metrics[0]["val_ppl"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "done" and summary["tokens_seen"] == 6 * 8 * 32
    assert summary["best_val_ppl"] == pytest.approx(min(m["val_ppl"] for m in metrics))
    for key in ("test_ppl", "n_params", "n_params_non_embedding", "tokens_per_s", "wall_s"):
        assert summary[key] > 0, key
    assert summary["bugs"] == [] and summary["floors"]["floor"] == "kneser_ney_5gram"
    # Three validations and the final validation and test: their seconds, and their share of the run's.
    assert 0 < summary["eval_s"] < summary["wall_s"]
    assert summary["eval_share"] == pytest.approx(summary["eval_s"] / summary["wall_s"])

    # The checkpoint alone rebuilds the model; it scores validation exactly as the run did.
    model, tokenizer, ckpt = load_model(run_dir / "checkpoints" / "best.pt")
    assert ckpt["train_state"]["step"] in (3, 6) and ckpt["optimizer"]["state"]
    cfg = compose_config([*CORPUS, *TINY, f"data.cache_dir={ckpt['config']['data']['cache_dir']}"])
    _, splits = load_splits(cfg.data, cfg.tokenizer)
    val = evaluate(model, splits["validation"], packed_rows(len(splits["validation"].tokens), 32),
                   tokenizer.eos_id, 64, "cpu")
    assert val.loss == pytest.approx(summary["best_val_loss"], rel=1e-6)
    # ... and gives the same logits as a model built from the Hydra config with those weights.
    from_config = GPT(gpt_config(cfg, tokenizer.vocab_size))
    from_config.load_state_dict(ckpt["model"])
    x = torch.tensor(tokenizer.encode(" The game was released in")).unsqueeze(0)
    assert torch.equal(model(x), from_config.eval()(x))


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    # The sampler hands out rows in order, so 2 micro-batches of 4 see the rows one batch of 8 sees.
    common = [*CORPUS, *TINY, "train.max_steps=2", "train.eval_every=2", "eval.max_batches=4",
              "eval.sample_tokens=0", "logger=none", "schedule.warmup_steps=1"]
    losses = []
    for name, shape in {"big": ["train.batch_size=8"], "accum": ["train.batch_size=4", "train.grad_accum=2"]}.items():
        r = run_cli([*common, *shape, f"hydra.run.dir={tmp_path / name}"], cwd=REPO)
        assert r.returncode == 0, r.stderr[-3000:]
        last = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[-1])
        losses.append((last["tokens"], last["train_loss"], last["val_loss"]))
    (tokens_a, train_a, val_a), (tokens_b, train_b, val_b) = losses
    assert tokens_a == tokens_b == 2 * 8 * 32
    assert train_b == pytest.approx(train_a, rel=1e-5) and val_b == pytest.approx(val_a, rel=1e-5)


def test_test_split_is_scored_with_the_best_checkpoint_not_the_final_weights(tmp_path):
    # A learning rate this high wrecks the model at its first update: step 0 stays the best.
    run_dir = tmp_path / "run"
    r = run_cli([*CORPUS, *TINY, "train.max_steps=2", "train.eval_every=2", "eval.max_batches=4",
                 "eval.sample_tokens=0", "logger=none", "schedule=none", "schedule.peak_lr=0.5",
                 f"hydra.run.dir={run_dir}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    cfg = compose_config([*CORPUS, *TINY])
    _, splits = load_splits(cfg.data, cfg.tokenizer)
    rows = packed_rows(len(splits["test"].tokens), 32)

    def test_loss(name):
        model, tokenizer, ckpt = load_model(run_dir / "checkpoints" / name)
        return ckpt["train_state"]["step"], evaluate(model, splits["test"], rows, tokenizer.eos_id, 64, "cpu",
                                                     max_batches=4).loss

    (best_step, best), (last_step, last) = test_loss("best.pt"), test_loss("last.pt")
    assert (best_step, last_step) == (0, 2) and last > best + 1.0
    assert summary["test_loss"] == pytest.approx(best, rel=1e-6)



def test_max_flops_ends_the_cosine_before_max_tokens_and_eval_s_sums_every_evaluation(monkeypatch, tmp_path):
    """Both budgets set (every shipped max_flops run sets max_tokens null): the LR decays over the
    steps max_flops allows, the first limit. And the evaluations' seconds are summed, read on a
    clock that only evaluations move, by 1 s each."""
    import time

    import lmlab.train
    from lmlab.config import to_container
    from lmlab.flops import model_flops_per_token
    from lmlab.step import TrainStep
    from lmlab.tracking import NoRecords

    lrs, clock, evaluations = [], [0.0], []
    step_call, score = TrainStep.__call__, lmlab.train.evaluate
    monkeypatch.setattr(TrainStep, "__call__", lambda self, batches, lr: lrs.append(lr) or step_call(self, batches, lr))
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])

    def evaluate_in_one_second(*args, **kwargs):
        clock[0] += 1.0
        evaluations.append(args[1].name)
        return score(*args, **kwargs)

    monkeypatch.setattr(lmlab.train, "evaluate", evaluate_in_one_second)
    cfg = compose_config([*CORPUS, *TINY, "train.max_steps=null", "train.eval_every=4", "eval.max_batches=1",
                          "eval.sample_tokens=0", "logger=none", "schedule.warmup_steps=0", "schedule.decay=cosine"])
    tokenizer, splits = load_splits(cfg.data, cfg.tokenizer)
    model = GPT(gpt_config(cfg, tokenizer.vocab_size))
    tokens_per_step = 8 * 32
    cfg.train.max_tokens = 40 * tokens_per_step
    cfg.train.max_flops = 10 * tokens_per_step * model_flops_per_token(model)
    summary = lmlab.train.train(cfg, model, tokenizer, splits, NoRecords(), tmp_path, to_container(cfg))
    assert summary["steps"] == len(lrs) == 10
    assert lrs == pytest.approx([lr_at(step, cfg.schedule, 10) for step in range(10)])
    assert lrs[-1] < 0.2 * cfg.schedule.peak_lr  # at the end of its decay (0.1 x peak), not a quarter of the way
    assert evaluations == ["validation"] * 4 + ["test"]  # steps 0, 4, 8, 10, then test
    assert summary["eval_s"] == len(evaluations)
