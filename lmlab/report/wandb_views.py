"""`python -m lmlab.report DIR --wandb`: a W&B report that compares the arms of the sweep in DIR,
saved online with W&B's own wandb-workspaces library (pip install -e '.[wandb-views]').

The report is first built as plain data from the job dirs (`sweep_view`: panels, metric keys,
grouping), which is what the tests check, offline; `to_report` turns it into wandb-workspaces
objects and `save_view` saves them. It has not been checked against a live W&B server.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from lmlab.report.jobs import SEED_KEY, Job, find_jobs, swept_keys

# A group's curve or bar is the mean of its runs (an arm's seeds); the band or error bar their
# standard deviation, the seed spread.
MEAN_AND_SPREAD = ("mean", "stddev")


@dataclass(frozen=True)
class Panel:
    kind: str  # line | bar | scatter | parallel
    title: str
    x: str | None = None  # line: a logged metric; scatter: a column (below)
    # Columns: "config.KEY" for a config value, else a summary metric (line: logged metrics).
    y: tuple[str, ...] = ()
    log_x: bool = False
    aggregate: tuple[str, str] | None = None  # (aggfunc, rangefunc) over each group's runs


@dataclass(frozen=True)
class Grid:
    """Panels over the sweep's runs, grouped by `groupby` (W&B's runset keys; none: run by run)."""
    title: str
    groupby: tuple[str, ...]
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class View:
    project: str
    entity: str | None  # None: the API key's default entity
    title: str
    run_ids: tuple[str, ...]  # the sweep's W&B runs (each job dir's wandb_run_id)
    grids: tuple[Grid, ...]


def _group_key(key: str) -> str:
    # A swept value is in each run's config; a swept config group (variant, model, ...) is not,
    # but lmlab tags each run with its choice (`variant=...`), so those arms group by tags.
    return f"config.{key}" if "." in key else "tags"


def _numbers(jobs: list[Job], key: str) -> list[float] | None:
    try:
        return [float(job.overrides[key]) for job in jobs if key in job.overrides]
    except ValueError:
        return None


def _is_optuna(root: Path) -> bool:
    path = root / "multirun.yaml"
    sweeper = (yaml.safe_load(path.read_text()) or {}).get("hydra", {}).get("sweeper", {}) if path.is_file() else {}
    return "optuna" in str(sweeper.get("_target_", "")).lower()


def sweep_view(root: Path) -> View:
    """The report for the jobs under root: validation perplexity against tokens and test
    perplexity, by arm; best validation loss against each swept number; and for an Optuna
    search, every searched key and the objective on parallel coordinates."""
    jobs = find_jobs(root)
    ids = tuple((job.path / "wandb_run_id").read_text().strip() for job in jobs
                if (job.path / "wandb_run_id").is_file())
    if not ids:
        raise ValueError(f"no job under {root} logged to W&B (no wandb_run_id): run the sweep with logger=wandb")
    logger = yaml.safe_load((jobs[0].path / ".hydra" / "config.yaml").read_text())["logger"]
    # Every swept key but the seed, the LR included: W&B groups runs as the sweep ran them, and the
    # LR is a key the panels below plot the loss against.
    keys = [key for key in swept_keys(jobs) if key != SEED_KEY]
    arms = Grid("Arms", tuple(dict.fromkeys(_group_key(key) for key in keys)), (
        Panel("line", "validation perplexity against tokens", x="tokens", y=("val_ppl",), aggregate=MEAN_AND_SPREAD),
        Panel("bar", "test perplexity (mean and seed spread)", y=("test_ppl",), aggregate=MEAN_AND_SPREAD)))
    grids = [arms]
    numeric = {key: values for key in keys if "." in key and (values := _numbers(jobs, key))}
    if numeric:
        grids.append(Grid("Runs", (), tuple(
            Panel("scatter", f"best validation loss against {key}", x=f"config.{key}", y=("best_val_loss",),
                  log_x=min(values) > 0 and max(values) / min(values) >= 10) for key, values in numeric.items())))
    if _is_optuna(root):
        grids.append(Grid("Optuna search", (), (Panel(
            "parallel", "searched values and the objective",
            y=(*(f"config.{key}" for key in keys if "." in key), "best_val_loss")),)))
    return View(logger["project"], logger.get("entity"), f"lmlab: {root.resolve().name}", ids, tuple(grids))


def _metric(wr, column: str):
    return wr.Config(column.removeprefix("config.")) if column.startswith("config.") else wr.SummaryMetric(column)


def _panel(wr, panel: Panel):
    agg, spread = panel.aggregate or (None, None)
    if panel.kind == "line":
        return wr.LinePlot(title=panel.title, x=panel.x, y=list(panel.y), groupby_aggfunc=agg,
                           groupby_rangefunc=spread)
    if panel.kind == "bar":
        return wr.BarPlot(title=panel.title, metrics=list(panel.y), groupby_aggfunc=agg, groupby_rangefunc=spread)
    if panel.kind == "scatter":
        return wr.ScatterPlot(title=panel.title, x=_metric(wr, panel.x), y=_metric(wr, panel.y[0]), log_x=panel.log_x)
    return wr.ParallelCoordinatesPlot(title=panel.title, columns=[
        wr.ParallelCoordinatesPlotColumn(metric=_metric(wr, column)) for column in panel.y])


def to_report(view: View, entity: str):
    """The view as a wandb-workspaces Report (made offline; saving it needs the server)."""
    import wandb_workspaces.reports.v2 as wr

    runs = f"ID in [{', '.join(repr(run_id) for run_id in view.run_ids)}]"
    blocks = []
    for grid in view.grids:
        runset = wr.Runset(entity=entity, project=view.project, name=grid.title, filters=runs,
                           groupby=list(grid.groupby))
        blocks += [wr.H2(grid.title), wr.PanelGrid(runsets=[runset], panels=[_panel(wr, p) for p in grid.panels])]
    return wr.Report(project=view.project, entity=entity, title=view.title, blocks=blocks,
                     description=f"{len(view.run_ids)} runs, made by `python -m lmlab.report DIR --wandb`")


def save_view(root: Path) -> str:
    """Save the sweep's view as a W&B report; returns its URL. Online only."""
    from lmlab.tracking import has_api_key, unreachable, wandb_server

    if not has_api_key():
        raise ValueError("--wandb saves a W&B report online: no API key here (run `wandb login` or set WANDB_API_KEY)")
    why = unreachable(wandb_server())
    if why:
        raise ValueError(f"--wandb saves a W&B report online: the W&B server {wandb_server()} cannot be reached "
                         f"({why}); report.md and its plots are written, rerun with --wandb where it can be")
    try:
        import wandb_workspaces  # noqa: F401
    except ImportError:
        raise ValueError("--wandb needs wandb-workspaces: pip install -e '.[wandb-views]'") from None
    import wandb

    view = sweep_view(root)
    report = to_report(view, view.entity or wandb.Api().default_entity)
    report.save()
    return report.url
