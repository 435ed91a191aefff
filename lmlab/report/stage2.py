"""Stage 2 of an LR-grid sweep: the commands that run more seeds of each arm at the LR stage 1
chose for it, into stage 1's own sweep dir, so one report then reads both stages.

Each command is rebuilt from one of the arm's jobs: its overrides (.hydra/overrides.yaml, as typed,
the sweep's config group included) with the chosen `schedule.peak_lr` and the new seeds in place of
the old, plus the Hydra overrides of the stage-1 command (multirun.yaml: launcher and its settings)
with `hydra.sweep.dir` set to stage 1's dir. Overrides given on the command line win over a sweep
config's `hydra.sweeper.params`, so the arm's values replace the sweep's lists. A job dir is named
from its overrides, and a stage-2 job differs from every stage-1 job in its seed or its LR (seeds
already run at the chosen LR are left out), so it never lands in a stage-1 job's dir."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import yaml

from lmlab.report.jobs import LR_KEY, SEED_KEY, arms, by_corpus, find_jobs, swept_keys
from lmlab.report.select import choose

EDGE_WARNING = ("# warning: every arm's chosen LR is at its grid's edge: each arm's best LR may lie outside its "
                "grid; extend the grid before running more seeds")


def _hydra_overrides(root: Path) -> list[str]:
    """The stage-1 command's `hydra...` overrides, but its sweep dir (and the mode -m sets)."""
    path = root / "multirun.yaml"
    config = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    lines = config.get("hydra", {}).get("overrides", {}).get("hydra") or []
    return [line for line in lines if line.split("=", 1)[0] not in ("hydra.sweep.dir", "hydra.mode")]


def _job_overrides(job_dir: Path) -> list[str]:
    items = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []
    return [item for item in items if item.split("=", 1)[0].lstrip("+~") not in (LR_KEY, SEED_KEY)]


def stage2_commands(root: Path, seeds: list[str] | dict[str, list[str]]) -> list[str]:
    """One shell line per arm: a command, or a comment saying why the arm needs none. `seeds` are
    every arm's, or each arm's by its name (the plan's)."""
    root = Path(root).resolve()
    jobs = find_jobs(root)
    keys = swept_keys(jobs)
    if LR_KEY not in keys:
        raise ValueError(f"{root} sweeps no {LR_KEY} grid: stage 2 runs seeds at each arm's LR chosen from one")
    hydra = _hydra_overrides(root)
    lines = []
    at_edge = []
    for corpus_jobs in by_corpus(jobs).values():
        for name, members in arms(jobs=corpus_jobs, keys=keys).items():
            arm = choose(name, members, lr_swept=True)
            if arm.lr is None:
                lines.append(f"# {name}: no job done, no LR chosen")
                continue
            at_edge.append(arm.at_edge)
            wanted = seeds.get(name, []) if isinstance(seeds, dict) else seeds
            new = [seed for seed in wanted if seed not in {job.seed for job in arm.chosen}]
            if not new:
                lines.append(f"# {name}: seeds {','.join(wanted)} already ran at its LR {arm.lr}")
                continue
            words = ["python", "-m", "lmlab", "-m", *_job_overrides(arm.chosen[0].path), f"{LR_KEY}={arm.lr}",
                     f"{SEED_KEY}={','.join(new)}", *hydra, f"hydra.sweep.dir={root}"]
            lines.append(" ".join(shlex.quote(word) for word in words))
    return [EDGE_WARNING, *lines] if at_edge and all(at_edge) else lines


def write_stage2(root: Path, seeds: list[str] | dict[str, list[str]], how: str, notes: list[str] = ()) -> Path:
    """Print-ready lines in ROOT/stage2.sh (executable), `how` they were asked for and `notes` in
    its header, and on stderr the warning that every arm's LR is at its grid's edge; returns its path."""
    path = Path(root) / "stage2.sh"
    commands = stage2_commands(root, seeds)
    if EDGE_WARNING in commands:
        print(f"lmlab.report: {EDGE_WARNING[2:]}", file=sys.stderr)
    path.write_text(f"#!/bin/sh\n# Stage 2: more seeds of each arm at the LR its stage-1 grid chose ({how}).\n"
                    + "".join(f"# {note}\n" for note in notes)
                    + "set -e\n" + "\n".join(commands) + "\n")
    path.chmod(0o755)
    return path
