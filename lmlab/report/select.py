"""Each arm at its own learning rate: where `schedule.peak_lr` is swept, an arm's jobs at each LR
are scored by their mean best validation loss over the seeds that every scored LR of the arm ran
(stage 1's seed: stage 2's seeds, run at the chosen LR alone, cannot move the choice to an LR with
fewer seeds), and the arm is reported at the LR where that is lowest. Only validation decides;
test is read at the chosen LR alone, so the choice cannot flatter an arm's test loss. An arm whose
best LR is the smallest or largest LR tried may do better outside it: the report says "extend the
grid"; an LR that diverged counts as tried, so the grid is never extended towards one."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from lmlab.report.jobs import LR_KEY, Job, exact
from lmlab.report.stats import Spread

VALIDATION = "best_val_loss"


@dataclass
class LRPoint:
    lr: str  # as typed in the overrides ("default" where a job left it unset)
    jobs: list[Job]
    val: Spread  # best validation loss of its done jobs, with their seeds

    @property
    def diverged(self) -> bool:
        """Tried and diverged: a job failed with TrainingDiverged and none is done."""
        return not self.val.n and any((job.summary.get("reason") or "").startswith("TrainingDiverged")
                                      for job in self.jobs)

    def mean_on(self, seeds: set) -> float:
        return statistics.fmean(v for v, seed in zip(self.val.values, self.val.seeds) if seed in seeds)


@dataclass
class Arm:
    name: str
    jobs: list[Job]  # every job of the arm, at every LR
    chosen: list[Job]  # the jobs the arm is reported by: those at its chosen LR (all, without a grid)
    grid: list[LRPoint] = field(default_factory=list)  # by LR, ascending; empty without an LR grid
    lr: str | None = None  # the chosen LR
    choice_seeds: set = field(default_factory=set)  # the seeds the choice compared the LRs on

    @property
    def at_edge(self) -> bool:
        """The chosen LR is the smallest or largest of at least 2 tried LRs (a diverged one counts)."""
        tried = [point.lr for point in self.grid if point.val.n or point.diverged]
        return len(tried) >= 2 and self.lr in (tried[0], tried[-1])


def _lr_order(lr: str) -> tuple:
    value = exact(lr)
    return (0, value, "") if isinstance(value, float) else (1, 0.0, lr)


def lr_grid(jobs: list[Job]) -> list[LRPoint]:
    """The arm's jobs by LR (exact value), ascending, each with its done seeds' validation losses."""
    by_lr: dict[object, list[Job]] = {}
    for job in jobs:
        by_lr.setdefault(exact(job.overrides.get(LR_KEY, "default")), []).append(job)
    points = []
    for members in by_lr.values():
        done = [job for job in members if job.done and job.summary.get(VALIDATION) is not None]
        points.append(LRPoint(members[0].overrides.get(LR_KEY, "default"), members,
                              Spread([job.summary[VALIDATION] for job in done], [job.seed for job in done])))
    return sorted(points, key=lambda point: _lr_order(point.lr))


def choose(name: str, jobs: list[Job], lr_swept: bool) -> Arm:
    """The arm named `name` at its best LR by mean validation loss (its only LR without a grid)."""
    if not lr_swept:
        return Arm(name, jobs, jobs)
    grid = lr_grid(jobs)
    scored = [point for point in grid if point.val.n]
    if not scored:  # nothing done: the arm is shown with all its jobs, none of them done
        return Arm(name, jobs, jobs, grid)
    seeds = set.intersection(*(set(point.val.seeds) for point in scored))
    seeds = seeds or {seed for point in scored for seed in point.val.seeds}  # no seed ran at every LR: all
    best = min(scored, key=lambda point: point.mean_on(seeds))
    return Arm(name, jobs, best.jobs, grid, best.lr, seeds)
