"""`python -m lmlab.report` and `lmlab-report`: the arguments, read before the statistics and plots
are imported (scipy and matplotlib take about 2 s, which `--help` need not wait for)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmlab.report.jobs import LR_KEY


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmlab.report",
                                     description="A table, statistics and plots of every job under DIR, offline.")
    parser.add_argument("dir", type=Path, help="a sweep dir or a folder of run dirs")
    parser.add_argument("--out", type=Path, default=None, help="where report.md and the PNGs go (default: DIR)")
    parser.add_argument("--baseline", default=None,
                        help="the arm the others are compared with, as the report labels it (e.g. 'variant=baseline'); "
                             "default: the arm with a swept value `baseline`, else the first")
    parser.add_argument("--stage2", action="store_true",
                        help=f"instead of a report: print (and write to DIR/stage2.sh) one command per arm that runs "
                             f"--seeds at the {LR_KEY} DIR's LR grid chose for it, into DIR")
    parser.add_argument("--seeds", default=None, help="with --stage2: the seeds to run, e.g. 1,2")
    parser.add_argument("--plan", action="store_true",
                        help="instead of a report: from a pilot (stage 1 and the baseline over several seeds), print "
                             "(and write to DIR/stage2.sh) one command per arm that runs the seeds its declared claims "
                             "need to be decided at the margin with the declared power")
    parser.add_argument("--max-seeds", type=int, default=10,
                        help="with --plan: the most seeds an arm gets (default 10)")
    parser.add_argument("--records", type=Path, default=None, metavar="OUT",
                        help="instead of a report: copy each job's record files (no checkpoints or logs, a few kB a "
                             "job) to OUT, from which `python -m lmlab.report OUT` rebuilds the same report anywhere")
    parser.add_argument("--wandb", action="store_true",
                        help="also save a W&B report comparing the arms (online; pip install -e '.[wandb-views]')")
    args = parser.parse_args(argv)
    if args.stage2 and not args.seeds:
        parser.error("--stage2 needs --seeds, e.g. --seeds 1,2")
    if args.stage2 and args.plan:
        parser.error("--stage2 and --plan both write stage 2: give one")
    if args.records:
        from lmlab.report.records import keep_records

        try:
            print(f"{keep_records(args.dir, args.records)} job records in {args.records}")
        except FileNotFoundError as e:
            print(f"lmlab.report: error: {e}", file=sys.stderr)
            return 2
        return 0
    from lmlab.report.stage2 import write_stage2
    from lmlab.report.wandb_views import save_view
    from lmlab.report.write import write_plan, write_report

    try:
        if args.stage2 or args.plan:
            script = (write_stage2(args.dir, args.seeds.split(","), f"--stage2 --seeds {args.seeds}") if args.stage2
                      else write_plan(args.dir, args.max_seeds, args.baseline))
            print(script.read_text(), end="")
            return 0
        report = write_report(args.dir, args.out, args.baseline)
        view_url = save_view(args.dir) if args.wandb else None
    except (FileNotFoundError, ValueError) as e:
        print(f"lmlab.report: error: {e}", file=sys.stderr)
        return 2
    print(report)
    if view_url:
        print(f"W&B report: {view_url}")
    return 0
