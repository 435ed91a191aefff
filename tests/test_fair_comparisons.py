"""Fair comparisons: a FLOPs budget stops training at it, test is scored per document and per
window position (and on common windows), and `lmlab.evaluate` scores a checkpoint again exactly."""
import json
import math

import pytest

from lmlab.data import load_splits
from tests.conftest import CORPUS, REPO, TINY, compose_config, run_cli

BUDGET = 2e8  # FLOPs: a few steps of the TINY model (~2e5 FLOPs a token, 256 tokens a step)


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    """TINY with dropout, stopped by train.max_flops alone, test also scored on 16-token windows; a
    constant LR, so that its few steps learn enough for dropout to cost loss beyond the noise of
    the split's masks (warmup's 2,000 steps would leave the model uniform)."""
    run_dir = tmp_path_factory.mktemp("budget") / "run"
    r = run_cli([*CORPUS, *TINY, "model.dropout=0.1", "schedule=none", "schedule.peak_lr=3e-3", "train.max_steps=null",
                 f"train.max_flops={BUDGET}", "train.eval_every=2", "eval.common_window=16", "eval.sample_tokens=0",
                 "logger=none", f"hydra.run.dir={run_dir}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir


def _json(path):
    return json.loads(path.read_text())


def test_a_flops_budget_stops_training_at_the_budget(budget_run):
    s = _json(budget_run / "summary.json")
    tokens_per_step = 8 * 32
    assert s["status"] == "done" and s["max_flops"] == BUDGET
    assert s["steps"] == math.ceil(BUDGET / (s["flops_per_token"] * tokens_per_step)) > 1
    assert s["tokens_seen"] == s["steps"] * tokens_per_step
    assert s["train_flops"] == s["flops_per_token"] * s["tokens_seen"]
    assert s["train_flops"] - s["flops_per_token"] * tokens_per_step < BUDGET <= s["train_flops"]


def test_test_scores_add_up_to_the_summary_per_document_and_on_common_windows(budget_run):
    s, scores = _json(budget_run / "summary.json"), _json(budget_run / "test_scores.json")
    cfg = compose_config([*CORPUS, *TINY])
    _, splits = load_splits(cfg.data, cfg.tokenizer)
    test = splits["test"]
    for key, windows in (("test", scores), ("test_common", scores["common"])):
        assert sum(windows["doc_nll"]) / sum(windows["doc_tokens"]) == pytest.approx(s[f"{key}_loss"], rel=1e-9)
        assert len(windows["doc_nll"]) == len(windows["doc_tokens"]) == test.n_docs
        assert sum(windows["doc_tokens"]) == sum(windows["position_tokens"]) == len(test.tokens) - 1
    assert (scores["window"], len(scores["position_loss"])) == (32, 32)
    assert (scores["common"]["window"], len(scores["common"]["position_loss"]), s["common_window"]) == (16, 16, 16)
    assert s["test_common_loss"] != s["test_loss"] and s["test_common_bpb"] > 0


def test_evaluate_cli_reproduces_the_runs_test_numbers_and_measures_train_mode(budget_run, tmp_path):
    s, scores = _json(budget_run / "summary.json"), _json(budget_run / "test_scores.json")
    ckpt = budget_run / "checkpoints" / "best.pt"
    r = run_cli([f"checkpoint={ckpt}", f"out={tmp_path / 'eval.json'}"], cwd=REPO, module="lmlab.evaluate")
    assert r.returncode == 0, r.stderr[-3000:]
    out = _json(tmp_path / "eval.json")
    for key in ("test_loss", "test_ppl", "test_word_ppl", "test_bpb", "test_common_loss", "common_window"):
        assert out[key] == pytest.approx(s[key], rel=1e-9), key
        assert json.loads(r.stdout)[key] == out[key]
    assert out["scores"]["doc_tokens"] == scores["doc_tokens"]  # the run's corpus and windows, common ones too
    assert out["scores"]["doc_nll"] == pytest.approx(scores["doc_nll"], rel=1e-9)
    assert out["scores"]["common"]["doc_nll"] == pytest.approx(scores["common"]["doc_nll"], rel=1e-9)

    r = run_cli([f"checkpoint={ckpt}", "split=validation", "mode=train"], cwd=REPO, module="lmlab.evaluate")
    assert r.returncode == 0, r.stderr[-3000:]
    train_mode = json.loads(r.stdout)
    assert set(train_mode) == {"val_loss", "val_ppl", "val_word_ppl", "val_bpb", "val_eos_logp", "common_window",
                               "val_common_loss", "val_common_ppl", "val_common_word_ppl", "val_common_bpb",
                               "val_common_eos_logp"}  # the run's windows
    assert train_mode["val_loss"] > s["best_val_loss"]  # dropout on: the seed's evaluation bug costs loss
    # Its masks are drawn from seed= (the checkpoint's train.seed by default): the same command scores the same.
    from lmlab.evaluate import main as evaluate

    assert evaluate([f"checkpoint={ckpt}", "split=validation", "mode=train"]) == train_mode
    other_seed = evaluate([f"checkpoint={ckpt}", "split=validation", "mode=train", "seed=1"])
    assert other_seed["val_loss"] != train_mode["val_loss"]


def test_evaluate_cli_names_a_bad_option_in_one_line(budget_run):
    r = run_cli([f"checkpoint={budget_run / 'checkpoints' / 'best.pt'}", "split=dev"], cwd=REPO,
                module="lmlab.evaluate")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "split" in r.stderr


def test_rescore_makes_an_arm_of_the_same_weights_in_train_mode(budget_run, tmp_path):
    import shutil

    import yaml

    from lmlab.report.jobs import arms, find_jobs, swept_keys
    from lmlab.rescore import main as rescore

    job = tmp_path / "sweep" / "+variant=baseline,train.seed=0"
    shutil.copytree(budget_run, job)
    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["+variant=baseline", "train.seed=0", *overrides]))
    s = _json(job / "summary.json")
    [same] = rescore([str(tmp_path / "sweep"), "as_arm=eval_again", "mode=eval"])
    assert _json(same / "summary.json")["test_loss"] == pytest.approx(s["test_loss"], rel=1e-12)  # the same weights
    [buggy] = rescore([str(tmp_path / "sweep"), "mode=train"])
    first = _json(buggy / "summary.json")
    [buggy] = rescore([str(tmp_path / "sweep"), "mode=train"])
    again = _json(buggy / "summary.json")
    assert first["test_loss"] == again["test_loss"] > s["test_loss"]  # dropout on costs; seeded, so repeatable
    assert first["best_val_loss"] == first["val_loss"] != s["best_val_loss"] and first["rescore_mode"] == "train"
    scores = _json(buggy / "test_scores.json")
    assert sum(scores["doc_nll"]) / sum(scores["doc_tokens"]) == pytest.approx(first["test_loss"], rel=1e-9)
    jobs = find_jobs(tmp_path / "sweep")
    grouped = arms(jobs=jobs, keys=swept_keys(jobs))
    assert sorted(grouped) == ["variant=baseline", "variant=bug_eval_train_mode", "variant=eval_again"]
