"""The report's references, compute and position sections on synthetic run dirs: n-gram references
to order 5 and the highest order each arm beats, FLOPs, the best size per FLOPs budget, per-document
intervals, the loss by window position and the common windows, and pruned trials."""
import json
import math

import numpy as np

from lmlab.report import write_report
from tests.test_report import _done, _job

REFERENCES = {"unigram": (5.0, 1), "interpolated_bigram": (3.50, 2), "kneser_ney_bigram": (3.45, 2),
              "kneser_ney_3gram": (2.891, 3), "kneser_ney_4gram": (2.635, 4), "kneser_ney_5gram": (2.583, 5)}
FLOORS = {"floor": "kneser_ney_5gram", **{name: {"test_loss": loss, "test_bpb": loss / 2, "test_word_ppl": 10 * loss,
                                                 "val_loss": loss, "order": order}
                                          for name, (loss, order) in REFERENCES.items()}}


def _scores(rng, rate: float, window: int) -> dict:
    tokens = rng.integers(50, 200, 40)
    nll = (rate + rng.normal(0, 0.2, 40)) * tokens
    position = list(rate + 1.0 / np.arange(1, window + 1))
    common = {"window": 4, "doc_nll": list(nll), "doc_tokens": tokens.tolist(), "position_loss": position[:4],
              "position_tokens": [100] * 4}
    return {"window": window, "doc_nll": list(nll), "doc_tokens": tokens.tolist(), "position_loss": position,
            "position_tokens": [100] * window, "common": common}


def test_references_to_order_5_documents_flops_positions_and_common_windows(tmp_path):
    rng = np.random.default_rng(0)
    num = 0
    for arm, loss, window in [("baseline", 3.373, 4), ("context", 2.70, 8)]:
        for seed in range(3):
            scores = _scores(rng, loss + 0.01 * seed * (arm == "context"), window)
            test_loss = sum(scores["doc_nll"]) / sum(scores["doc_tokens"])
            summary = _done(60.0, math.exp(test_loss), test_bpb=test_loss / 2, floors=FLOORS, train_flops=2.5e12,
                            test_common_loss=test_loss + 0.05, common_window=4)
            job = _job(tmp_path, num, [f"+variant={arm}", f"train.seed={seed}"], summary, [6.0, loss])
            (job / "test_scores.json").write_text(json.dumps(scores))
            num += 1
    report = write_report(tmp_path).read_text()
    header = next(line for line in report.splitlines() if line.startswith("| arm |"))
    assert "| test nats/token on common windows | training FLOPs |" in header
    assert "| Δ [95% CI over seeds and test documents] |" in header
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in report.splitlines()
            if line.startswith("| variant=")}
    assert rows["variant=baseline"][-1] == "Kneser-Ney bigram, not Kneser-Ney 3-gram |"
    assert rows["variant=context"][-1] == "Kneser-Ney 3-gram, not Kneser-Ney 4-gram |"
    assert rows["variant=context"][5].endswith("(T=4)") and rows["variant=context"][6].startswith("2.5e+12")
    low, high = map(float, rows["variant=context"][8].strip("[]").split(", "))
    diff = float(rows["variant=context"][7].split()[0])
    assert low < diff < high and high - low < 0.2  # 40 documents of 50-200 tokens, per-document noise 0.2
    assert "paired t" in rows["variant=context"][7] and "Holm" in rows["variant=context"][9]
    # Every reference in nats/token and bits/byte, the strongest named the floor.
    assert ("| Kneser-Ney 5-gram (the floor): counted on train, tuned on validation | - | 2.583 | 25.8 | 1.2915 |"
            in report)
    for name in ("unigram", "interpolated bigram", "Kneser-Ney bigram", "Kneser-Ney 3-gram", "Kneser-Ney 4-gram"):
        assert f"| {name}: counted on train, tuned on validation | - | " in report
    # The job table's FLOPs, the position plot.
    assert "| 0 | variant=baseline, train.seed=0 | 1,234,567 | 3,000 | 2.5e+12 |" in report
    assert (tmp_path / "loss_by_position.png").read_bytes()[:4] == b"\x89PNG" and "(loss_by_position.png)" in report


def test_an_isoflop_sweep_finds_the_best_size_per_budget(tmp_path):
    optimum = {"1e12": 100_000, "4e12": 300_000}
    num = 0
    for budget, best in optimum.items():
        for width in (32, 64, 128):
            n = 32 * width ** 2
            loss = 3.0 + 0.1 * math.log(n / best) ** 2 - 0.2 * (budget == "4e12")
            summary = _done(60.0, math.exp(loss), n_params_non_embedding=n, train_flops=float(budget))
            _job(tmp_path, num, [f"model.d_model={width}", f"train.max_flops={budget}"], summary, [6.0, loss])
            num += 1
    report = write_report(tmp_path).read_text()
    assert "## Iso-FLOP: the best model size for each compute budget" in report
    assert "| 1e+12 | 32,768, 131,072, 524,288 | 131,072 | 3.007 | 100,000 (3.000) |" in report
    assert "| 4e+12 | 32,768, 131,072, 524,288 | 524,288 | 2.831 | 300,000 (2.800) |" in report
    assert "## Scaling" not in report
    assert (tmp_path / "isoflop.png").read_bytes()[:4] == b"\x89PNG" and "(isoflop.png)" in report


def test_two_sizes_per_budget_are_not_fitted_and_pruned_trials_are_listed_apart(tmp_path):
    for num, (width, budget) in enumerate([(32, "1e12"), (64, "1e12"), (32, "2e12"), (64, "2e12")]):
        _job(tmp_path, num, [f"model.d_model={width}", f"train.max_flops={budget}"],
             _done(60.0, math.exp(3.0 + num / 10), n_params_non_embedding=32 * width ** 2), [6.0])
    _job(tmp_path, 4, ["model.d_model=128", "train.max_flops=1e12"], {"status": "pruned", "reason": "step 3"}, [6.0])
    report = write_report(tmp_path).read_text()
    assert "5 jobs: 4 done, 1 pruned (stopped early by the sweeper), 0 failed or unfinished." in report
    assert "| 1e+12 | 32,768, 131,072 | 32,768 | 3.000 | not fitted: 2 sizes (a parabola needs 3) |" in report
