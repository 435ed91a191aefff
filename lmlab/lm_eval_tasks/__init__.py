"""lm-evaluation-harness task definitions (YAML) for lmlab runs: `lm_eval --include_path lmlab/lm_eval_tasks`."""
