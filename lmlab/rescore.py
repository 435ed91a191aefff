"""`python -m lmlab.rescore DIR [arm=baseline] [as_arm=bug_eval_train_mode] [mode=train]`: an arm of
a sweep made by scoring another arm's checkpoints again, without training.

The seed's eval-mode bug is a property of the evaluation alone, so its effect is measured on the
very weights the baseline trained, paired by seed and LR, with no training noise between the two.
The command scores each done job of `arm` under DIR (its `+variant` override) with `python -m
lmlab.evaluate`'s code on validation and test, its best.pt in `mode` (train: dropout on, the bug),
and writes beside it a job dir of arm `as_arm` that the report reads as any other: the same
overrides with `+variant=<as_arm>`, the job's summary.json with the re-scored val_* and test_* metrics (best_val_* being the best
checkpoint's, chosen in eval mode), and test_scores.json. Dropout's draws are seeded by the job's
seed, so a re-run writes the same numbers.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from lmlab.cli import HELP_FLAGS, parse_key_values
from lmlab.resolvers import job_dirname

VARIANT_KEY = "+variant"


@dataclass
class RescoreConfig:
    arm: str = "baseline"
    as_arm: str = "bug_eval_train_mode"
    mode: str = "train"


def _overrides(job_dir: Path) -> list[str]:
    return yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []


def _with_variant(overrides: list[str], variant: str) -> list[str]:
    return [f"{VARIANT_KEY}={variant}" if o.split("=", 1)[0] == VARIANT_KEY else o for o in overrides]


def rescore_job(job_dir: Path, variant: str, mode: str) -> Path:
    """Writes and returns the re-scored job dir beside `job_dir`."""
    from lmlab.evaluate import main as evaluate

    summary = json.loads((job_dir / "summary.json").read_text())
    overrides = _with_variant(_overrides(job_dir), variant)
    seed = int(yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text())["train"]["seed"])
    checkpoint = job_dir / "checkpoints" / "best.pt"
    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        for split in ("validation", "test"):
            out = Path(tmp) / f"{split}.json"
            evaluate([f"checkpoint={checkpoint}", f"split={split}", f"mode={mode}", f"seed={seed}", f"out={out}"])
            found[split] = json.loads(out.read_text())
    val, test = found["validation"], found["test"]
    metrics = {k: v for k, v in {**val, **test}.items() if k.startswith(("val_", "test_"))}
    target = job_dir.parent / job_dirname(",".join(overrides))
    shutil.rmtree(target, ignore_errors=True)
    (target / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml"):
        shutil.copy(job_dir / ".hydra" / name, target / ".hydra" / name)
    (target / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (target / "summary.json").write_text(json.dumps(
        {**summary, **metrics, "best_val_loss": val["val_loss"], "best_val_ppl": val["val_ppl"],
         "rescored_from": str(job_dir), "rescore_mode": mode}, indent=1))
    (target / "test_scores.json").write_text(json.dumps(test["scores"]))
    return target


def main(argv: list[str] | None = None) -> list[Path]:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in HELP_FLAGS:
        parse_key_values(RescoreConfig, argv, doc=__doc__)  # prints the usage page and exits 0
    if not argv or "=" in argv[0]:
        raise SystemExit("usage: python -m lmlab.rescore DIR [arm=baseline] [as_arm=bug_eval_train_mode] [mode=train]")
    root, args = Path(argv[0]), parse_key_values(RescoreConfig, argv[1:], doc=__doc__)
    sources = sorted(p.parent for p in root.glob("*/summary.json")
                     if f"{VARIANT_KEY}={args.arm}" in _overrides(p.parent)
                     and json.loads(p.read_text()).get("status") == "done")
    if not sources:
        raise SystemExit(f"no done job of +variant={args.arm} under {root}")
    written = [rescore_job(job, args.as_arm, args.mode) for job in sources]
    print("\n".join(str(p) for p in written))
    return written


if __name__ == "__main__":
    main()
