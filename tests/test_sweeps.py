"""Sweeps as a user runs them (`python -m lmlab -m sweep=...` in a subprocess, shrunk): one job dir
per job with the overrides in effect, one offline W&B run per job, failed jobs recorded while the
sweep goes on, Optuna's result, and the report over a real sweep dir."""
import json
import math
from pathlib import Path

import pytest
import yaml

from lmlab.resolvers import job_dirname
from lmlab.validation import validate
from tests.conftest import CORPUS, MINI, REPO, TINY, compose_config, needs_mini, run_cli
from tests.test_tracking import read_offline_run

SWEEPS = REPO / "sweeps"
# TINY, two optimizer steps (8 rows x 32 tokens each), two validation batches per evaluation.
SHRINK = [*CORPUS, *TINY, "train.max_tokens=512", "eval.max_batches=2"]


def _overrides(job_dir: Path) -> dict[str, str]:
    """What Hydra recorded as this job's overrides: the swept values plus the command line."""
    return dict(item.split("=", 1) for item in yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()))


def _summary(job_dir: Path) -> dict:
    return json.loads((job_dir / "summary.json").read_text())


def _metrics(job_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", ["size", "dff_ratio", "context", "warmup", "rootcause", "optuna", "width"])
def test_every_sweep_stops_on_tokens_in_its_own_dir_and_yields_to_the_user(name):
    cfg = compose_config([f"sweep={name}"], hydra=True)
    assert cfg.hydra.sweep.dir.startswith(f"outputs/sweeps/{name}/")
    assert cfg.train.max_steps is None and cfg.train.max_tokens == 40_960_000
    assert cfg.data.hub_config == "wikitext-103-raw-v1"  # scale=seed: the seed's corpus
    assert cfg.hydra.sweeper.params  # it really sweeps something
    shrunk = compose_config([f"sweep={name}", "train.max_tokens=1000", "model.d_model=64", f"data.local_dir={MINI}"])
    assert (shrunk.train.max_tokens, shrunk.model.d_model, shrunk.data.local_dir) == (1000, 64, str(MINI))


def test_optuna_sweep_is_a_seeded_tpe_search_with_a_pruner():
    sweeper = compose_config(["sweep=optuna"], hydra=True).hydra.sweeper
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed is not None
    assert sweeper.direction == "minimize" and sweeper.pruner._target_ == "optuna.pruners.MedianPruner"
    assert set(sweeper.params) == {"schedule.peak_lr", "schedule.warmup_steps", "train.weight_decay", "model.dropout"}
    assert sweeper.params["schedule.peak_lr"].startswith("tag(log")


# The seed's baseline and fixes at each scale: size (d_model, n_heads, n_layers), ratio, context,
# rows a batch, common test window, warmup steps, decay (kind, floor); the baseline's token budget,
# tokens a step, steps and stage 1's LR grid.
SEED_FIXES = {"size": (512, 8, 6), "ratio": 4, "context": 512, "rows": 16, "common_window": 256, "warmup": 2000,
              "decay": ("cosine", 0.1)}
SEED_BASELINE = {"size": (256, 4, 4), "ratio": 2, "context": 256, "rows": 32, "common_window": None, "warmup": 0,
                 "decay": ("constant", 1.0), "tokens_per_step": 8192}
SEED_GRID = "1.33e-4,2e-4,3e-4,4.5e-4,6.75e-4"  # 5 LRs a factor 1.5 apart, centred on the seed's 3e-4
SCALES = {"seed": ({**SEED_BASELINE, "budget": 40_960_000, "steps": 5000}, SEED_FIXES, SEED_GRID),
          "wikitext103": ({**SEED_BASELINE, "budget": 250_000_000, "steps": 30518}, SEED_FIXES, SEED_GRID),
          "cpu": ({"size": (96, 3, 3), "ratio": 2, "context": 64, "rows": 32, "common_window": None, "warmup": 0,
                   "decay": ("constant", 1.0), "tokens_per_step": 2048, "budget": 819_200, "steps": 400},
                  {"size": (128, 4, 4), "ratio": 4, "context": 128, "rows": 16, "common_window": 64, "warmup": 40,
                   "decay": ("cosine", 0.1)}, "7.5e-4,1.5e-3,3e-3"),
          "regime": ({"size": (64, 4, 4), "ratio": 2, "context": 64, "rows": 8, "common_window": None, "warmup": 0,
                      "decay": ("constant", 1.0), "tokens_per_step": 512, "budget": 3_051_520, "steps": 5960},
                     {"size": (128, 8, 6), "ratio": 4, "context": 128, "rows": 4, "common_window": 64, "warmup": 2384,
                      "decay": ("cosine", 0.1)}, "4.4e-4,6.7e-4,1e-3,1.5e-3,2.25e-3")}
RESCORED = {"bug_eval_train_mode"}  # measured on the baseline's checkpoints (python -m lmlab.rescore), not trained
# Training length, named on the command line of the seed's scale's plan (docs/study.md), not in the
# sweep's list: its budget, rootcause.long_tokens, is the seed's scale's (250M against 40.96M).
LENGTH_ARM = {"scale": "seed", "arm": "longer", "budget": 250_000_000, "steps": 30518}


AT_EQUAL_COMPUTE = {"budget", "max_flops", "steps"}  # a FLOPs budget in place of the token budget


@pytest.mark.parametrize("scale", SCALES)
def test_the_equal_compute_arms_stop_at_the_baselines_flops(scale):
    from lmlab.config import gpt_config
    from lmlab.flops import model_flops_per_token, token_budget
    from lmlab.model import GPT

    def arm(name: str) -> tuple:
        cfg = compose_config(["sweep=rootcause", f"scale={scale}", f"+variant={name}"])
        return cfg, model_flops_per_token(GPT(gpt_config(cfg, cfg.tokenizer.vocab_size)))

    base, base_flops = arm("baseline")
    assert math.isclose(base.rootcause.max_flops, base_flops * base.train.max_tokens, rel_tol=1e-9)
    for name in ("size_compute", "ratio_compute"):
        cfg, flops = arm(name)
        assert flops > base_flops and cfg.train.max_tokens is None
        assert token_budget(None, cfg.train.max_flops, flops) == math.ceil(base_flops * base.train.max_tokens / flops)


@pytest.mark.parametrize("scale", SCALES)
def test_rootcause_arms_change_one_factor_at_a_time_at_equal_tokens_steps_and_peak_lr(scale, monkeypatch):
    import torch

    import lmlab.runtime
    from lmlab.schedule import planned_steps

    # On a CPU with native bf16, train.precision=auto picks by width: every arm must train at one precision.
    monkeypatch.setattr(lmlab.runtime, "cpu_has_native_bf16", lambda: True)

    baseline, fixes, lr_grid = SCALES[scale]
    params = compose_config(["sweep=rootcause", f"scale={scale}"], hydra=True).hydra.sweeper.params
    arms = params["+variant"].split(",")
    assert sorted(arms) == sorted(p.stem for p in (SWEEPS / "variant").glob("*.yaml")
                                  if p.stem not in RESCORED | {LENGTH_ARM["arm"]})
    assert (params["train.seed"], params["schedule.peak_lr"]) == ("0", lr_grid)  # stage 1: the LR grid on one seed

    def factors(arm: str) -> dict:
        cfg = compose_config(["sweep=rootcause", f"scale={scale}", f"+variant={arm}", "schedule.peak_lr=1e-3"])
        validate(cfg)
        t, m = cfg.train, cfg.model
        return {"size": (m.d_model, m.n_heads, m.n_layers), "ratio": m.d_ff_ratio, "context": m.max_seq_len,
                "rows": t.batch_size, "common_window": cfg.eval.common_window, "warmup": cfg.schedule.warmup_steps,
                "decay": (cfg.schedule.decay, cfg.schedule.min_lr_ratio), "packing": cfg.data.packing,
                "bugs": {k for k, on in cfg.bugs.items() if on}, "peak_lr": cfg.schedule.peak_lr,
                "precision": lmlab.runtime.resolve_precision(torch.device("cpu"), t.precision, m.d_model),
                "budget": t.max_tokens, "max_flops": t.max_flops, "tokens_per_step": t.batch_size * t.grad_accum * m.max_seq_len,
                "steps": t.max_tokens and planned_steps(t.max_steps, t.max_tokens, t.batch_size * t.grad_accum * m.max_seq_len)}

    base = factors("baseline")
    assert {k: v for k, v in base.items() if k != "precision"} == \
        {**baseline, "packing": True, "bugs": set(), "peak_lr": 1e-3, "max_flops": None}  # no warmup, no decay
    for arm in arms + ([LENGTH_ARM["arm"]] if scale == LENGTH_ARM["scale"] else []):
        arm_factors = factors(arm)
        changed = {k for k, v in arm_factors.items() if v != base[k]}
        expected = {"baseline": set(), "context": {"context", "rows", "common_window"}, "longer": {"budget", "steps"},
                    "warmup_decay": {"warmup", "decay"}, "all_fixes": set(fixes),
                    "unpacked": {"packing"}, "bug_no_pad_mask": {"packing", "bugs"},
                    "size_compute": {"size", *AT_EQUAL_COMPUTE}, "ratio_compute": {"ratio", *AT_EQUAL_COMPUTE}}.get(
                        arm, {"bugs"} if arm.startswith("bug_") else {arm})
        # Never the tokens a step, the steps, the budget or the peak LR: each arm's LR is the grid's.
        assert changed == expected, arm
        assert all(arm_factors[k] == fixes[k] for k in changed & set(fixes)), arm
        if arm == LENGTH_ARM["arm"]:  # the same rows and LR for longer: the factor's second value
            assert (arm_factors["budget"], arm_factors["steps"]) == (LENGTH_ARM["budget"], LENGTH_ARM["steps"])
    # The context arm: the baseline's tokens in fewer, longer rows; test also on the baseline's windows.
    assert fixes["rows"] * fixes["context"] == base["tokens_per_step"] and fixes["common_window"] == base["context"]


def test_a_batch_that_does_not_fill_whole_rows_fails_before_any_compute():
    cfg = compose_config(["sweep=rootcause", "scale=cpu", "+variant=context", "rootcause.batch_tokens=4000"])
    with pytest.raises(Exception, match="4000 tokens do not fill whole rows of 128"):
        validate(cfg)


def test_isoflop_sweep_stops_each_size_at_each_flops_budget():
    from lmlab.config import gpt_config
    from lmlab.flops import model_flops_per_token, token_budget
    from lmlab.model import GPT
    from lmlab.schedule import planned_steps

    cfg = compose_config(["sweep=isoflop"], hydra=True)
    assert cfg.hydra.sweep.dir.startswith("outputs/sweeps/isoflop/")
    params = cfg.hydra.sweeper.params
    assert len(params["model.d_model"].split(",")) >= 3 and len(params["train.max_flops"].split(",")) >= 2
    assert params["schedule.peak_lr"] == SEED_GRID
    for d_model, budget in ((128, 3e14), (384, 3e15)):
        job = compose_config(["sweep=isoflop", f"model.d_model={d_model}", f"train.max_flops={budget}"])
        validate(job)
        t = job.train
        assert (t.max_steps, t.max_tokens, job.schedule.warmup_steps, job.schedule.decay) == (None, None, 0, "cosine")
        flops_tok = model_flops_per_token(GPT(gpt_config(job, 8192)))
        tokens_per_step = t.batch_size * job.model.max_seq_len
        steps = planned_steps(t.max_steps, token_budget(t.max_tokens, t.max_flops, flops_tok), tokens_per_step)
        assert steps == math.ceil(budget / (flops_tok * tokens_per_step))  # the cosine horizon is the budget's


@needs_mini  # the study's corpus at scale=cpu: WikiText's articles pooled (data=wikitext2_pool)
def test_rootcause_stage1_jobs_run_at_equal_tokens_and_steps(tmp_path):
    """Two arms of stage 1 end to end, shrunk to two steps: the context arm takes the baseline's
    tokens in half the rows, and its test is also scored on the baseline's windows."""
    sweep_dir = tmp_path / "rootcause"
    r = run_cli(["-m", "sweep=rootcause", "scale=cpu", "data=wikitext2_pool", "+variant=baseline,context",
                 "schedule.peak_lr=1e-3",
                 f"data.local_dir={MINI}", "tokenizer.vocab_size=512", "train.max_tokens=4096", "eval.max_batches=2",
                 "eval.sample_tokens=0", "logger=none", f"hydra.sweep.dir={sweep_dir}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = {_overrides(d)["+variant"]: d for d in sweep_dir.iterdir() if (d / ".hydra").is_dir()}
    summaries = {arm: _summary(d) for arm, d in jobs.items()}
    assert sorted(jobs) == ["baseline", "context"] and all(s["status"] == "done" for s in summaries.values())
    assert summaries["baseline"]["steps"] == summaries["context"]["steps"] == 2
    assert summaries["baseline"]["tokens_seen"] == summaries["context"]["tokens_seen"] == 4096
    assert summaries["context"]["common_window"] == 64 and "test_common_loss" in summaries["context"]
    assert "test_common_loss" not in summaries["baseline"]
    assert json.loads((jobs["context"] / "test_scores.json").read_text())["common"]["window"] == 64


# The shrink overrides docs/sweeps.md advises, which change no key a sweep varies.
DOCS_SHRINK = ["data=kjv", "tokenizer.vocab_size=512", "train.max_tokens=4096",
               "train.batch_size=4", "eval.batch_size=4", "eval.max_batches=2", "eval.sample_tokens=0", "logger=none"]


@pytest.mark.parametrize("overrides, warning", [
    (["sweep=context", "model.max_seq_len=64"],
     "model.max_seq_len=64 replaces the values sweep=context sweeps (model.max_seq_len=128,256,512,1024)"),
    (["sweep=size", "model.d_model=64"], "model.d_model=64 replaces what sweep=size's model=optionA,optionC set"),
    (["sweep=rootcause", "scale=cpu", "model.max_seq_len=64", "schedule.peak_lr=1e-3"],
     "model.max_seq_len=64 replaces what sweep=rootcause's +variant=context,all_fixes set; schedule.peak_lr=1e-3 "
     "replaces the values sweep=rootcause sweeps (schedule.peak_lr=7.5e-4,1.5e-3,3e-3)"),
    *[([f"sweep={name}", *DOCS_SHRINK], None) for name in ("context", "size", "warmup")],
    (["sweep=rootcause", *DOCS_SHRINK], "train.max_tokens=4096 replaces what sweep=rootcause's "
     "+variant=size_compute,ratio_compute set"),  # they stop at rootcause.max_flops
])
def test_a_key_the_sweep_varies_pinned_on_the_command_line_is_named(overrides, warning):
    from hydra import compose, initialize_config_module

    from lmlab.overrides import pinned_keys

    with initialize_config_module(config_module="lmlab.conf", version_base="1.3"):
        found = pinned_keys(compose("config", overrides, return_hydra_config=True), lambda o: compose("config", o))
    if warning is None:
        assert found is None
    else:
        assert found.startswith(warning) and found.endswith("see docs/sweeps.md") and "\n" not in found


def test_the_warning_comes_before_the_one_job_a_pinned_sweep_runs(tmp_path):
    sweep_dir = tmp_path / "context"
    r = run_cli(["-m", "sweep=context", *SHRINK, f"hydra.sweep.dir={sweep_dir}", "logger=none", "eval.sample_tokens=0"],
                cwd=REPO)  # TINY pins model.max_seq_len=32
    assert r.returncode == 0, r.stderr[-3000:]
    output = r.stdout + r.stderr
    assert "model.max_seq_len=32 replaces the values sweep=context sweeps" in output
    assert output.index(" replaces ") < output.index("Launching 1 jobs")
    assert len([d for d in sweep_dir.iterdir() if (d / ".hydra").is_dir()]) == 1


def test_dff_ratio_sweep_gives_one_job_and_one_wandb_run_per_ratio(tmp_path):
    sweep_dir = tmp_path / "dff_ratio" / "t0"
    r = run_cli(["-m", "sweep=dff_ratio", *SHRINK, f"hydra.sweep.dir={sweep_dir}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert " replaces " not in r.stdout + r.stderr  # TINY pins model.* keys, none that this sweep varies
    jobs = {float(_overrides(d)["model.d_ff_ratio"]): d for d in sweep_dir.iterdir() if (d / ".hydra").is_dir()}
    assert sorted(jobs) == [1, 2, 4, 8]
    summaries = {ratio: _summary(d) for ratio, d in jobs.items()}
    assert all(s["status"] == "done" and s["tokens_seen"] == 512 for s in summaries.values())
    # Each layer's MLP holds d x ff + ff + ff x d + d parameters: ratios differ by 2*d*dff + dff.
    d_model, n_layers = 32, 2
    for ratio, s in summaries.items():
        dff = int(ratio * d_model) - d_model
        assert s["n_params"] - summaries[1]["n_params"] == n_layers * (2 * d_model * dff + dff)

    runs = {ratio: read_offline_run(d) for ratio, d in jobs.items()}
    assert len({run["id"] for run in runs.values()}) == 4  # consecutive jobs never share a run
    for ratio, run in runs.items():
        assert run["id"] == (jobs[ratio] / "wandb_run_id").read_text()
        assert run["group"] == "dff_ratio/t0"  # the sweep name and timestamp
        # Named by the job's overrides, the swept one first; its dir is the same name, cut and hashed when long.
        assert jobs[ratio].name == job_dirname(run["name"]) and run["name"].startswith(f"model.d_ff_ratio={ratio:g},")
        assert {"sweep=dff_ratio", "model=small"} <= set(run["tags"])
        assert run["config"]["model"]["d_ff_ratio"] == ratio
        assert run["config"]["derived"]["d_ff"] == ratio * d_model
        assert run["config"]["derived"]["n_params"] == summaries[ratio]["n_params"]
        assert run["summary"]["best_val_ppl"] == pytest.approx(summaries[ratio]["best_val_ppl"])
        assert run["summary"]["test_ppl"] == pytest.approx(summaries[ratio]["test_ppl"])
        assert run["summary"]["tokens"] == 512 and run["exit_code"] == 0


def test_warmup_sweep_goes_on_past_failed_jobs_and_the_report_shows_them(tmp_path):
    sweep_dir = tmp_path / "warmup"
    # n_heads=3 does not divide d_model=32 (the job raises before training); a peak LR of 1e30
    # sends the loss to NaN at the first step. Only 2 of the 8 jobs can finish; all 8 must run.
    r = run_cli(["-m", "sweep=warmup", *SHRINK, "model.n_heads=2,3", "schedule.peak_lr=1e-3,1e30", "logger=none",
                 f"hydra.sweep.dir={sweep_dir}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = {d.name: d for d in sweep_dir.iterdir() if (d / ".hydra").is_dir()}
    assert len(jobs) == 8
    for name, d in jobs.items():
        summary = _summary(d)
        if "model.n_heads=3" in name:
            assert summary["status"] == "failed" and "model.n_heads" in summary["reason"]
        elif "peak_lr=1e+30" in name:  # Hydra writes the float back as 1e+30
            assert summary["status"] == "failed" and "training loss of nan" in summary["reason"]
        else:
            assert summary["status"] == "done" and math.isfinite(summary["best_val_ppl"])
        assert not (d / "wandb").exists() and not (d / "wandb_run_id").exists()  # logger=none

    def first_lr(schedule: str) -> float:
        [job] = [d for name, d in jobs.items() if f"schedule={schedule}" in name and "n_heads=2" in name
                 and "peak_lr=0.001" in name]
        return _metrics(job)[0]["lr"]

    assert first_lr("none") == pytest.approx(1e-3)  # constant from step 0
    assert first_lr("warmup") == pytest.approx(1e-3 / 2000)  # the first of 2000 warmup steps

    r = run_cli([str(sweep_dir)], cwd=REPO, module="lmlab.report")
    assert r.returncode == 0, r.stderr[-3000:]
    report = (sweep_dir / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 8
    assert sum("failed: ConfigError: model.n_heads" in row for row in rows) == 4
    assert sum("failed: TrainingDiverged" in row for row in rows) == 2
    assert sum(row.endswith("| done |") for row in rows) == 2
    for png in ("best_val_ppl_by_schedule.png", "best_val_ppl_by_model.n_heads.png",
                "best_val_ppl_by_schedule.peak_lr.png", "val_loss_curves.png"):
        assert (sweep_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"({png})" in report


def test_optuna_sweep_writes_a_finite_best_value(tmp_path):
    sweep_dir = tmp_path / "optuna"
    r = run_cli(["-m", "sweep=optuna", "hydra.sweeper.n_trials=3", *SHRINK, "logger=none",
                 f"hydra.sweep.dir={sweep_dir}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert math.isfinite(result["best_value"])
    assert set(result["best_params"]) == {"schedule.peak_lr", "schedule.warmup_steps", "train.weight_decay",
                                          "model.dropout"}
    trials = sorted(d for d in (sweep_dir / "lmlab").iterdir() if (d / "summary.json").exists())
    assert [d.name for d in trials] == ["0", "1", "2"]  # <sweep dir>/<study name>/<trial number>
    best = min(_summary(d)["best_val_loss"] for d in trials)
    assert result["best_value"] == pytest.approx(best)  # the objective is the best validation loss


def test_job_dirs_start_with_what_the_sweep_varies_and_a_relaunch_finds_them(tmp_path):
    """With many fixed overrides the names pass 200 bytes and end in a hash: the swept values come
    first, so they are never the part cut off (the issue measured `eval.max_batches=4,...~4f39`)."""
    sweep_dir = tmp_path / "sweep"
    args = ["-m", *SHRINK, "schedule=none,warmup", "train.seed=0", "train.eval_every=2", "eval.sample_tokens=0",
            "logger=none", f"hydra.sweep.dir={sweep_dir}"]
    r = run_cli(args, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    names = sorted(d.name for d in sweep_dir.iterdir() if (d / ".hydra").is_dir())
    assert [n.split(",")[0] for n in names] == ["schedule=none", "schedule=warmup"]
    assert all(len(n.encode()) <= 200 and "~" in n for n in names)
    assert names[0].split(",")[1:4] == ["data=kjv", "eval.batch_size=64", "eval.max_batches=2"]  # then the rest, sorted
    r = run_cli(args, cwd=REPO)  # relaunched: the same dirs, found done
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("is done already") == 2
    assert sorted(d.name for d in sweep_dir.iterdir() if (d / ".hydra").is_dir()) == names


@pytest.mark.parametrize("data, corpus", [([], "kjv"), (["data=wikitext2"], "wikitext2"),
                                          (["data=text", "data.local_dir=x.txt"], "text")])
def test_scale_cpu_keeps_the_corpus_the_user_chose_and_names_no_shared_folder(data, corpus):
    """A scale is a budget and shapes: its default corpus is one every install has (data=kjv), and
    data= on the command line wins, with none of the scale's own data keys laid over it."""
    cfg = compose_config(["sweep=dff_ratio", "scale=cpu", *data])
    assert cfg.data.name == corpus and "shared" not in str(cfg.data.local_dir)
    assert not cfg.data.pool and cfg.data.holdout == compose_config(data or ["data=kjv"]).data.holdout
    assert cfg.train.threads == 1 and cfg.model.name == "mini"  # one thread a job, the budget's model


def test_a_sweep_whose_jobs_all_failed_exits_non_zero_and_says_so(tmp_path):
    r = run_cli(["-m", "data=text", f"data.local_dir={tmp_path / 'nowhere'}", *TINY, "model.d_ff_ratio=1,2",
                 "train.max_steps=2", "logger=none", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=REPO)
    assert r.returncode == 1, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("lmlab: error: every job of the sweep failed (2 of 2)") and "is neither a folder" in last
    assert "next:" not in r.stdout and "Traceback" not in r.stderr
