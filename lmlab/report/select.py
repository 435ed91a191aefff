"""Each arm at its own learning rate: where `schedule.peak_lr` is swept, an arm's jobs at each LR
are scored by their mean best validation loss over the seeds run there, and the arm is reported at
the LR where that is lowest. Only validation decides; test is read at the chosen LR alone, so the
choice cannot flatter an arm's test loss. An arm whose best LR is the smallest or largest of its
grid may do better outside it: the report says "extend the grid"."""
from __future__ import annotations

from dataclasses import dataclass, field

from lmlab.report.jobs import LR_KEY, Job, exact
from lmlab.report.stats import Spread

VALIDATION = "best_val_loss"


@dataclass
class LRPoint:
    lr: str  # as typed in the overrides ("default" where a job left it unset)
    jobs: list[Job]
    val: Spread  # best validation loss of its done jobs


@dataclass
class Arm:
    name: str
    jobs: list[Job]  # every job of the arm, at every LR
    chosen: list[Job]  # the jobs the arm is reported by: those at its chosen LR (all, without a grid)
    grid: list[LRPoint] = field(default_factory=list)  # by LR, ascending; empty without an LR grid
    lr: str | None = None  # the chosen LR

    @property
    def at_edge(self) -> bool:
        """The chosen LR is the smallest or largest of a grid of at least 2 tried LRs."""
        tried = [point.lr for point in self.grid if point.val.n]
        return len(tried) >= 2 and self.lr in (tried[0], tried[-1])


def _lr_order(lr: str) -> tuple:
    value = exact(lr)
    return (0, value, "") if isinstance(value, float) else (1, 0.0, lr)


def lr_grid(jobs: list[Job]) -> list[LRPoint]:
    """The arm's jobs by LR (exact value), ascending, each with its done seeds' validation losses."""
    by_lr: dict[object, list[Job]] = {}
    for job in jobs:
        by_lr.setdefault(exact(job.overrides.get(LR_KEY, "default")), []).append(job)
    points = [LRPoint(members[0].overrides.get(LR_KEY, "default"), members,
                      Spread([j.summary[VALIDATION] for j in members
                              if j.done and j.summary.get(VALIDATION) is not None]))
              for members in by_lr.values()]
    return sorted(points, key=lambda point: _lr_order(point.lr))


def choose(name: str, jobs: list[Job], lr_swept: bool) -> Arm:
    """The arm named `name` at its best LR by mean validation loss (its only LR without a grid)."""
    if not lr_swept:
        return Arm(name, jobs, jobs)
    grid = lr_grid(jobs)
    scored = [point for point in grid if point.val.n]
    if not scored:  # nothing done: the arm is shown with all its jobs, none of them done
        return Arm(name, jobs, jobs, grid)
    best = min(scored, key=lambda point: point.val.mean)
    return Arm(name, jobs, best.jobs, grid, best.lr)
