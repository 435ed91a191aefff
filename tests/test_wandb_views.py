"""The W&B report `python -m lmlab.report DIR --wandb` saves, checked offline as the data it is
built from (panels, metric keys, grouping) on synthetic sweep dirs; no W&B server is reached."""
import json

import pytest
import yaml

from lmlab.report.wandb_views import MEAN_AND_SPREAD, sweep_view, to_report
from lmlab.report.cli import main


def make_sweep(root, jobs: list[dict], sweeper: str = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
               logger: str = "wandb"):
    """A sweep dir as lmlab writes it: per job its overrides, config, W&B run id and summary."""
    (root / "multirun.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": {"_target_": sweeper}}}))
    for num, overrides in enumerate(jobs):
        job = root / str(num)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"{k}={v}" for k, v in overrides.items()]))
        (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": num}}}))
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
            {"logger": {"kind": logger, "project": "lmlab", "entity": "lab"}}))
        (job / "summary.json").write_text(json.dumps({"status": "done", "best_val_loss": 5.0, "test_ppl": 150.0}))
        if logger == "wandb":
            (job / "wandb_run_id").write_text(f"run{num}\n")
    return root


LR_SEEDS = [{"schedule.peak_lr": lr, "train.seed": seed, "train.max_tokens": 512}
            for lr in ("1e-4", "1e-3", "1e-2") for seed in (0, 1)]


def test_arms_are_grouped_by_their_swept_values_with_the_seed_spread(tmp_path):
    view = sweep_view(make_sweep(tmp_path / "lr", LR_SEEDS))
    assert (view.project, view.entity) == ("lmlab", "lab")
    assert view.run_ids == tuple(f"run{n}" for n in range(6))
    arms, runs = view.grids
    assert arms.groupby == ("config.schedule.peak_lr",)  # not the seed: an arm's seeds are one group
    curves, test = arms.panels
    assert (curves.kind, curves.x, curves.y, curves.aggregate) == ("line", "tokens", ("val_ppl",), MEAN_AND_SPREAD)
    assert (test.kind, test.y, test.aggregate) == ("bar", ("test_ppl",), ("mean", "stddev"))
    assert runs.groupby == ()  # one point per run
    (scatter,) = runs.panels
    assert (scatter.kind, scatter.x, scatter.y, scatter.log_x) == ("scatter", "config.schedule.peak_lr",
                                                                    ("best_val_loss",), True)  # LRs span decades


def test_an_optuna_search_adds_parallel_coordinates_of_its_searched_keys(tmp_path):
    trials = [{"schedule.peak_lr": lr, "model.dropout": d} for lr, d in (("3e-4", "0.1"), ("5e-4", "0.05"))]
    view = sweep_view(make_sweep(tmp_path / "optuna", trials, sweeper="hydra_plugins.lmlab_optuna.sweeper.OptunaSweeper"))
    arms, runs, search = view.grids
    assert arms.groupby == ("config.schedule.peak_lr", "config.model.dropout")
    assert [p.x for p in runs.panels] == ["config.schedule.peak_lr", "config.model.dropout"]
    assert not any(p.log_x for p in runs.panels)  # neither spans a decade
    (parallel,) = search.panels
    assert (parallel.kind, parallel.y) == ("parallel", ("config.schedule.peak_lr", "config.model.dropout",
                                                        "best_val_loss"))


def test_a_swept_config_group_groups_by_the_runs_tags(tmp_path):
    view = sweep_view(make_sweep(tmp_path / "rootcause", [{"+variant": v, "train.seed": s}
                                                          for v in ("baseline", "warmup") for s in (0, 1)]))
    assert [grid.groupby for grid in view.grids] == [("tags",)]  # lmlab tags each run `variant=...`


def test_the_view_becomes_a_wandb_workspaces_report(tmp_path):
    wr = pytest.importorskip("wandb_workspaces.reports.v2")
    view = sweep_view(make_sweep(tmp_path / "optuna", LR_SEEDS, sweeper="hydra_plugins.lmlab_optuna.sweeper.OptunaSweeper"))
    report = to_report(view, "lab")
    grids = [block for block in report.blocks if isinstance(block, wr.PanelGrid)]
    assert [type(p).__name__ for grid in grids for p in grid.panels] == ["LinePlot", "BarPlot", "ScatterPlot",
                                                                         "ParallelCoordinatesPlot"]
    assert all(grid.runsets[0].filters == "ID in ['run0', 'run1', 'run2', 'run3', 'run4', 'run5']" for grid in grids)
    assert grids[0].runsets[0].groupby == ["config.schedule.peak_lr"]
    assert (grids[0].panels[1].groupby_aggfunc, grids[0].panels[1].groupby_rangefunc) == ("mean", "stddev")


def test_without_an_api_key_wandb_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    sweep = make_sweep(tmp_path / "lr", LR_SEEDS)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main([str(sweep), "--wandb"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no API key" in err and "wandb login" in err
    assert (sweep / "report.md").is_file()  # the offline report is written all the same


def test_jobs_that_did_not_log_to_wandb_have_no_view(tmp_path):
    with pytest.raises(ValueError, match="logger=wandb"):
        sweep_view(make_sweep(tmp_path / "offline", LR_SEEDS, logger="none"))


def test_a_key_without_a_reachable_server_is_one_line_and_the_report_is_written(tmp_path, monkeypatch, capsys):
    from tests.test_tracking import closed_port

    sweep = make_sweep(tmp_path / "lr", LR_SEEDS)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("WANDB_BASE_URL", url)
    assert main([str(sweep), "--wandb"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"the W&B server {url} cannot be reached" in err, err
    assert (sweep / "report.md").is_file()
