"""lmlab's Optuna sweeper for Hydra (`hydra/sweeper=optuna`): Optuna >= 4, ask-and-tell, pruners.

The sweeper asks the study for trials and launches each as a job through the configured Hydra
launcher (basic, joblib, submitit), in `<sweep dir>/<study name>/<trial number>`, a dir it first
claims for the trial (`_jobs.claim`). A job learns its trial from its own config: the sweeper
passes `hydra.sweeper.trial=N` (and the default storage's URL), and `trial.job_trial` opens it
there to report intermediate values and ask the pruner. When the job ends, the sweeper tells the
study what the job's summary.json says: done (its objective), pruned, or failed (with why).
"""
