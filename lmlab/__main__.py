"""`python -m lmlab [overrides]`: compose -> validate -> load data -> train -> return the objective.

The objective (best validation loss) is what Hydra sweepers minimise; a failed job returns inf.
"""
from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lmlab.atomic import write_text
from lmlab.config import ModelConfig, gpt_config, to_container, validate

log = logging.getLogger("lmlab")


def run(cfg: DictConfig, run_dir: Path) -> float:
    import torch

    from lmlab.data import load_splits
    from lmlab.model import GPT
    from lmlab.tracking import Tracker
    from lmlab.train import train

    tokenizer, splits = load_splits(cfg.data, cfg.tokenizer)
    torch.manual_seed(cfg.train.seed)
    model = GPT(gpt_config(cfg, tokenizer.vocab_size))
    config = to_container(cfg)
    derived = {"d_ff": ModelConfig.d_ff(cfg.model), "vocab_size": tokenizer.vocab_size,
               "n_params": model.n_params(), "n_params_non_embedding": model.n_params(non_embedding=True),
               "tokens_per_step": cfg.train.batch_size * cfg.train.grad_accum * cfg.model.max_seq_len}
    log.info("model: %s parameters (%s non-embedding), d_ff=%d", f"{derived['n_params']:,}",
             f"{derived['n_params_non_embedding']:,}", derived["d_ff"])
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    group = f"{Path(hydra_cfg.sweep.dir).parent.name}/{Path(hydra_cfg.sweep.dir).name}" if multirun else run_dir.name
    tracker = Tracker(run_dir, cfg.logger, {**config, "derived": derived}, group=group,
                      name=hydra_cfg.job.override_dirname or run_dir.name)
    try:
        summary = train(cfg, model, tokenizer, splits, tracker, run_dir, config)
    except Exception as e:
        tracker.write_summary({"status": "failed", "reason": f"{type(e).__name__}: {e}", **derived})
        raise
    finally:
        tracker.close()
    tracker.write_summary(summary)
    log.info("done: best val ppl %.2f, test ppl %.2f, %s", summary["best_val_ppl"], summary["test_ppl"], run_dir)
    return summary["best_val_loss"] if math.isfinite(summary["best_val_loss"]) else math.inf


@hydra.main(version_base="1.3", config_path="pkg://lmlab.conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from lmlab.errors import USER_ERRORS

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        validate(cfg)
        return run(cfg, run_dir)
    except Exception as e:
        reason = f"{type(e).__name__}: {e}"
        if not (run_dir / "summary.json").exists():
            write_text(run_dir / "summary.json", json.dumps({"status": "failed", "reason": reason}))
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # record the failure; the sweep goes on
            log.error("job failed: %s", reason)
            return math.inf
        if not isinstance(e, USER_ERRORS):
            raise
        print(f"lmlab: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
