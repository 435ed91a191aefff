"""The report knows its sweep: an Optuna search is reported as trials (state, objective, tokens
when stopped, the values tried, the best trial named, the objective against each searched key on
its own scale), not as arms against trial 0; pruned is never failed; a sweep that varies no model
size gets no scaling law; a sweep whose jobs all failed gets no empty plots."""
import math

import yaml

from lmlab.report import write_report

from tests.test_report import _done, _job

OPTUNA = {"hydra": {"sweeper": {"_target_": "hydra_plugins.lmlab_optuna.sweeper.OptunaSweeper",
                                "params": {"schedule.peak_lr": "tag(log, interval(1e-4, 3e-3))",
                                           "model.dropout": "interval(0.0, 0.2)"}}}}


def _search(root):
    root.mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text(yaml.safe_dump(OPTUNA, sort_keys=False))
    trials = [("0.0002", "0.05", _done(120.0, 121.0, best_val_loss=math.log(120.0))),
              ("0.0021", "0.15", _done(90.0, 92.0, best_val_loss=math.log(90.0))),
              ("0.0009", "0.1", {"status": "pruned", "reason": "trial 2 pruned by MedianPruner at 2,000 tokens",
                                 "tokens_seen": 2000, "best_val_loss": math.log(130.0), "best_val_ppl": 130.0}),
              ("0.0028", "0.0", {"status": "failed", "reason": "TrainingDiverged: loss is nan at step 3"}),
              ("0.0004", "0.2", _done(100.0, 101.0, best_val_loss=math.log(100.0)))]
    for num, (lr, dropout, summary) in enumerate(trials):
        _job(root, num, [f"schedule.peak_lr={lr}", f"model.dropout={dropout}", "sweep=optuna"], summary,
             [6.0, 5.0, math.log(summary.get("best_val_ppl", 400.0))])
    return root


def test_an_optuna_search_is_reported_as_trials_with_the_best_named(tmp_path):
    report = write_report(_search(tmp_path / "search")).read_text()
    assert "5 jobs: 3 done, 1 pruned (stopped early by the sweeper), 1 failed or unfinished." in report
    assert "## Arms against the baseline" not in report and "Learning rate per arm" not in report
    trials = report.split("## Trials")[1].split("\n## ")[0]
    rows = [line for line in trials.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert rows == ["| 0 | done | 4.7875 | 3,000 | 0.0002 | 0.05 |",
                    "| 1 | done | 4.4998 | 3,000 | 0.0021 | 0.15 |",
                    "| 2 | pruned | 4.8675 | 2,000 | 0.0009 | 0.1 |",
                    "| 3 | failed | - | - | 0.0028 | 0 |",
                    "| 4 | done | 4.6052 | 3,000 | 0.0004 | 0.2 |"]
    assert "Best trial: 1 (best validation loss 4.4998, perplexity 90.00; test perplexity 92.00): " \
           "`schedule.peak_lr=0.0021 model.dropout=0.15`" in trials
    assert (tmp_path / "search" / "objective_by_searched_value.png").is_file()
    assert "failed" not in report.split("| 2 |")[1].split("\n")[0]  # the pruned trial's job row


def test_a_log_sampled_key_is_drawn_on_a_log_axis():
    from lmlab.report.trials import log_scaled

    assert log_scaled(OPTUNA["hydra"]["sweeper"]["params"], {"schedule.peak_lr": [2e-4, 3e-3],
                                                             "model.dropout": [0.0, 0.2]}) == \
        {"schedule.peak_lr": True, "model.dropout": False}


def test_a_d_ff_sweep_gets_no_scaling_law(tmp_path):
    for num, ratio in enumerate((1, 2, 4, 8)):
        _job(tmp_path, num, [f"model.d_ff_ratio={ratio}"],
             _done(100.0 - ratio, 101.0 - ratio, n_params_non_embedding=10_000 * (1 + ratio)), [6.0, 4.6])
    report = write_report(tmp_path).read_text()
    assert "Scaling" not in report and not (tmp_path / "scaling_fit.png").exists()


def test_a_sweep_whose_jobs_all_failed_gets_no_plots(tmp_path):
    for num, ratio in enumerate((1, 2)):
        _job(tmp_path, num, [f"model.d_ff_ratio={ratio}"], {"status": "failed", "reason": "DataError: no data"}, [])
    report = write_report(tmp_path).read_text()
    assert not list(tmp_path.glob("*.png")) and "No plots: no job finished." in report


def test_curves_start_where_the_drawn_points_do_and_one_seed_draws_no_spread_bar(tmp_path, monkeypatch):
    from lmlab.report import plots

    figures = {}

    def keep(fig, path):
        figures[path.name] = fig
        return path

    monkeypatch.setattr(plots, "_save", keep)
    for num, ratio in enumerate((1, 2)):  # one seed an arm; the untrained loss far above the rest
        _job(tmp_path, num, [f"model.d_ff_ratio={ratio}"], _done(100.0 - ratio, 101.0 - ratio), [9.0, 5.0, 4.6])
    write_report(tmp_path)
    curves = figures["val_loss_curves.png"].axes[0]
    assert curves.get_ylim()[1] < 9.0 and curves.get_xlim()[0] > 500  # step 0 (0 tokens) is off the axis
    arms = figures["test_loss_by_arm.png"].axes[0]
    assert not arms.containers  # no mean-and-SD bar for an arm of one seed


def test_with_one_evaluation_after_step_0_the_curves_are_drawn_whole(tmp_path, monkeypatch):
    from lmlab.report import plots

    figures = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.setdefault(path.name, fig) and path)
    for num, ratio in enumerate((1, 2)):  # evaluations at 0 tokens and at the end only
        _job(tmp_path, num, [f"model.d_ff_ratio={ratio}"], _done(100.0 - ratio, 101.0 - ratio), [9.0, 4.6])
    write_report(tmp_path)
    curves = figures["val_loss_curves.png"].axes[0]
    assert curves.get_xlim()[0] <= 0 < 1000 <= curves.get_xlim()[1] and curves.get_ylim()[1] >= 9.0
