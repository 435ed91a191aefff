"""`python -m lmlab [overrides]`: compose -> validate -> load data -> train -> return the objective.

The objective (best validation loss) is what Hydra sweepers minimise; a failed job returns inf, and
so does a trial its Optuna study pruned (summary.json status "pruned", exit status 0).
A run resumes from its run dir's checkpoints (train.resume=auto), and a relaunched sweep skips
the jobs whose summary.json says done or pruned.
"""
from __future__ import annotations

import logging
import math
import os
import shlex
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lmlab import LAUNCHED
from lmlab.config import ModelConfig, gpt_config, to_container
from lmlab.resolvers import job_name
from lmlab.tracking import RunEnd, finished_summary
from lmlab.validation import validate

log = logging.getLogger("lmlab")


def run(cfg: DictConfig, run_dir: Path, end: RunEnd) -> float:
    import torch

    from lmlab import distributed
    from lmlab.checkpoint import check_same_run, resume_checkpoint
    from lmlab.data import load_splits
    from lmlab.data.floors import load_floors
    from lmlab.errors import Preempted
    from lmlab.generate import corpus_prompts, eval_sampler, last_samples_quality
    from lmlab.model import GPT
    from lmlab.tracking import NoRecords, Pruned, Tracker, trial_reporter
    from lmlab.train import train

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    threads = distributed.place_job(cfg.train.threads, parallel_jobs(hydra_cfg), hydra_cfg.job.num if multirun else 0)
    ranks = distributed.setup(cfg.train.device, cfg.train.dist_timeout_s)
    resume = resume_checkpoint(cfg.train.resume, run_dir / "checkpoints")
    tokenizer, splits = load_splits(cfg.data, cfg.tokenizer)
    floors = load_floors(cfg.data, cfg.tokenizer, splits, tokenizer.vocab_size)
    bugs = [name for name, on in cfg.bugs.items() if on]
    for name in bugs:
        log.warning("bug switch on: bugs.%s puts the seed's bug back on purpose; this run measures its cost", name)
    torch.manual_seed(cfg.train.seed)
    model = GPT(gpt_config(cfg, tokenizer.vocab_size))
    cfg.eval.sample_prompts = corpus_prompts(cfg, tokenizer, splits["validation"])
    config = to_container(cfg)
    if resume is not None:
        check_same_run(resume, model.cfg, config["data"], tokenizer.ref)
    derived = {"d_ff": ModelConfig.d_ff(cfg.model), "vocab_size": tokenizer.vocab_size,
               "n_params": model.n_params(), "n_params_non_embedding": model.n_params(non_embedding=True),
               "tokens_per_step": cfg.train.batch_size * cfg.train.grad_accum * cfg.model.max_seq_len,
               "processes": ranks.world, "threads": threads}
    log.info("model: %s parameters (%s non-embedding), d_ff=%d", f"{derived['n_params']:,}",
             f"{derived['n_params_non_embedding']:,}", derived["d_ff"])
    group = f"{Path(hydra_cfg.sweep.dir).parent.name}/{Path(hydra_cfg.sweep.dir).name}" if multirun else run_dir.name
    choices = hydra_cfg.runtime.choices
    tags = [f"{g}={choices[g]}" for g in ("sweep", "variant", "model", "schedule", "data") if choices.get(g)]
    end.known = derived
    tracker = end.records = NoRecords() if not ranks.main else Tracker(
        run_dir, cfg.logger, {**config, "derived": derived}, group=group, name=job_name(hydra_cfg) or run_dir.name,
        tags=tags, resume_id=resume["train_state"]["wandb_run_id"] if resume else None)
    first_eval_tokens = derived["tokens_per_step"] * cfg.train.eval_every  # a pruner's default min_resource
    on_eval = every(eval_sampler(cfg, tokenizer, tracker, run_dir),
                    trial_reporter(hydra_cfg.sweeper, ranks.world == 1, first_eval_tokens)) if ranks.main else None
    try:
        with distributed.lost_processes_reported(cfg.train.dist_timeout_s, run_dir):
            summary = train(cfg, model, tokenizer, splits, tracker, run_dir, config, resume=resume, launched=LAUNCHED,
                            on_eval=on_eval, ranks=ranks)
        summary.update(processes=ranks.world, threads=threads, floors=floors, bugs=bugs,
                       **last_samples_quality(run_dir))
        end.write(summary)  # before close: it also fills the W&B run's summary
    except Pruned as e:  # the Optuna study's pruner stopped this trial: a result, not a failure
        end.write({"status": "pruned", "reason": str(e), **e.progress, **derived, "floors": floors, "bugs": bugs})
        log.info("%s: %s", e, run_dir)
        return math.inf
    except Exception as e:
        end.failed(e)
        if isinstance(e, Preempted):
            raise Preempted(f"{e}. Resume with: {resume_command(run_dir, multirun)}") from None
        raise
    finally:
        tracker.close()
        distributed.teardown()
    if ranks.main:  # one line a launch, not one per process
        log.info("done: best val ppl %.2f, test ppl %.2f, %s", summary["best_val_ppl"], summary["test_ppl"], run_dir)
    return objective(summary)


def every(*hooks):
    """One `on_eval` hook that runs the given ones (None: left out) in turn; None if none is left."""
    hooks = [hook for hook in hooks if hook is not None]
    if not hooks:
        return None

    def on_eval(model, state, final: bool = False) -> None:
        for hook in hooks:
            hook(model, state, final=final)

    return on_eval


def parallel_jobs(hydra_cfg) -> int:
    """How many jobs of this sweep run at once on this machine: joblib's n_jobs (-1 = one per core)."""
    launcher = hydra_cfg.launcher
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return 1
    n_jobs = launcher.get("n_jobs") or 1
    return n_jobs if n_jobs > 0 else max(1, (os.cpu_count() or 1) + 1 + n_jobs)


def objective(summary: dict) -> float:
    """What a sweeper minimises: the best validation loss of a done run, else inf."""
    loss = summary.get("best_val_loss")
    return loss if summary.get("status") == "done" and loss is not None and math.isfinite(loss) else math.inf


@hydra.main(version_base="1.3", config_path="pkg://lmlab.conf", config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    from hydra_plugins.lmlab_optuna.trial import redact_files
    from lmlab.distributed import this_process
    from lmlab.errors import exit_for

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if HydraConfig.get().output_subdir is not None:
        redact_files(run_dir / HydraConfig.get().output_subdir)  # a storage URL's password, as typed
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    end = RunEnd(run_dir, main=this_process().main)
    try:
        validate(cfg)
        # A relaunched sweep reuses its job dirs (named from the overrides): done jobs are not rerun.
        done = finished_summary(run_dir) if multirun and cfg.train.resume == "auto" else None
        if done is not None:
            log.info("skipped: %s is %s already (summary.json)", run_dir, done["status"])
            return objective(done)
        return run(cfg, run_dir, end)
    except Exception as e:
        from lmlab.run_record import undo_failed_start

        end.failed(e)  # a no-op where run() has written it
        if not multirun and end.main:
            undo_failed_start(run_dir)
        if multirun:
            from lmlab.errors import Preempted

            if not isinstance(e, Preempted):  # record the failure; the sweep goes on
                log.error("job failed (objective inf): %s: %s", type(e).__name__, e)
                return math.inf
        exit_for(e)
        raise


def resume_command(run_dir: Path, multirun: bool) -> str:
    """The command that resumes this run: the one that started it, naming its run dir (or a
    sweep's dir), since a default dir is stamped anew at every launch."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    where = Path(HydraConfig.get().sweep.dir) if multirun else run_dir
    args = [a for a in sys.argv[1:] if a.lstrip("+~").split("=", 1)[0] != key]
    if not sys.argv[0].endswith("__main__.py"):
        program = [Path(sys.argv[0]).name]
    elif "TORCHELASTIC_RUN_ID" in os.environ:
        program = ["torchrun", "...", "-m", "lmlab"]
    else:
        program = ["python", "-m", "lmlab"]
    return shlex.join([*program, *args, f"{key}={where}"])


def main() -> None:
    """The `lmlab` command: errors a user can fix are one line on stderr (see lmlab.errors)."""
    from lmlab.errors import report_errors
    from lmlab.options import answer_help
    from lmlab.run_record import remember, with_recorded_overrides

    answer_help("config", "lmlab")
    sys.argv[1:] = with_recorded_overrides(sys.argv[1:])
    remember(sys.argv[1:])
    report_errors(hydra_main)


if __name__ == "__main__":
    main()
