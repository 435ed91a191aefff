"""Reference floors held to hand-computed numbers on a toy corpus, tuned on validation, cached once
per token cache, and carried into summary.json."""
import json
import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from lmlab.data import Split, load_splits
from lmlab.data.floors import (FLOORS_FILE, BigramCounts, compute_floors, interpolated_bigram_probs,
                               kneser_ney_probs, load_floors, unigram_probs)
from lmlab.data.tokens import cache_dir
from tests.conftest import MINI, REPO, TINY, compose_config, needs_mini, run_cli

# V = 3, token 0 plays EOS. Pairs: (0,1) x2, (1,2) x3, (2,1), (2,0) x2, (1,1).
TRAIN = np.array([0, 1, 2, 1, 2, 0, 1, 1, 2, 0])
V = 3


def test_counts_are_the_hand_counts():
    c = BigramCounts.of(TRAIN, V)
    assert c.unigram.tolist() == [2, 4, 3]  # of the 9 predicted tokens
    assert c.context.tolist() == [2, 4, 3]
    assert dict(zip((c.pair_codes // V * 10 + c.pair_codes % V).tolist(), c.pair_counts.tolist())) == \
        {1: 2, 11: 1, 12: 3, 20: 2, 21: 1}  # ab -> c(a, b)
    assert c.followers.tolist() == [1, 2, 2] and c.continuation.tolist() == [1, 3, 1]
    assert c.pair_count(np.array([1, 0, 2]), np.array([2, 0, 0])).tolist() == [3, 0, 2]


def test_probabilities_equal_a_hand_computation():
    c = BigramCounts.of(TRAIN, V)
    # Add-one unigram: (c + 1) / (9 + 3).
    np.testing.assert_allclose(unigram_probs(c, 1.0), [3 / 12, 5 / 12, 4 / 12])
    prev, nxt = np.array([1, 0, 2]), np.array([2, 0, 1])
    # Jelinek-Mercer, lambda 1/2: 1/2 c(a,b)/c(a) + 1/2 p_uni(b).
    expected = [Fraction(1, 2) * Fraction(3, 4) + Fraction(1, 2) * Fraction(4, 12),
                Fraction(1, 2) * 0 + Fraction(1, 2) * Fraction(3, 12),
                Fraction(1, 2) * Fraction(1, 3) + Fraction(1, 2) * Fraction(5, 12)]
    np.testing.assert_allclose(interpolated_bigram_probs(c, prev, nxt, 1.0, 0.5), [float(f) for f in expected])
    # Kneser-Ney, D = 1/2. Continuation: (max(N1+(.b) - D, 0) + D x 3 types / V) / 5 = [1/5, 3/5, 1/5].
    # p(2|1) = (3 - 1/2)/4 + (1/2 x 2/4) x 1/5;  p(0|0) = 0 + (1/2 x 1/2) x 1/5;  p(1|2) = (1/2)/3 + (1/2 x 2/3) x 3/5.
    expected = [Fraction(5, 8) + Fraction(1, 20), Fraction(1, 20), Fraction(1, 6) + Fraction(1, 5)]
    np.testing.assert_allclose(kneser_ney_probs(c, prev, nxt, 0.5), [float(f) for f in expected])


@pytest.mark.parametrize("vocab_extra", [0, 2])  # 2: tokens never seen in training at all
def test_every_conditional_distribution_sums_to_one(vocab_extra):
    vocab = V + vocab_extra
    c = BigramCounts.of(TRAIN, vocab)
    for a in range(vocab):  # seen contexts and, with the extra tokens, unseen ones
        prev, nxt = np.full(vocab, a), np.arange(vocab)
        for probs in (interpolated_bigram_probs(c, prev, nxt, 0.3, 0.7), kneser_ney_probs(c, prev, nxt, 0.75)):
            assert probs.sum() == pytest.approx(1.0) and (probs > 0).all()


def _split(name: str, tokens, n_words=4, n_bytes=20) -> Split:
    return Split(name, np.asarray(tokens), n_docs=1, n_words=n_words, n_bytes=n_bytes)


def test_floors_report_the_model_metrics_with_smoothing_tuned_on_validation():
    rng = np.random.default_rng(0)
    # A Markov chain over 6 tokens: the bigrams know something the unigram does not.
    transition = rng.dirichlet(np.full(6, 0.3), size=6)

    def chain(n):
        out = [0]
        for _ in range(n - 1):
            out.append(rng.choice(6, p=transition[out[-1]]))
        return out

    splits = {"train": _split("train", chain(400)), "validation": _split("validation", chain(300)),
              "test": _split("test", chain(300), n_words=120, n_bytes=700)}
    floors = compute_floors(splits, 6)
    c = BigramCounts.of(splits["train"].tokens, 6)
    val = (splits["validation"].tokens[:-1], splits["validation"].tokens[1:])
    test = (splits["test"].tokens[:-1], splits["test"].tokens[1:])

    def nll(probs):
        return -np.log(probs).sum()

    # Each tuned parameter is the best on validation: a nearby value scores validation no better.
    kn, jm, uni = floors["kneser_ney_bigram"], floors["interpolated_bigram"], floors["unigram"]
    for d in (kn["discount"] * 0.8, min(0.999, kn["discount"] * 1.2)):
        assert nll(kneser_ney_probs(c, *val, kn["discount"])) <= nll(kneser_ney_probs(c, *val, d)) + 1e-6
    for lam in (jm["lambda"] * 0.8, min(0.999, jm["lambda"] * 1.2)):
        assert nll(interpolated_bigram_probs(c, *val, uni["alpha"], jm["lambda"])) <= \
            nll(interpolated_bigram_probs(c, *val, uni["alpha"], lam)) + 1e-6
    # ... and validation and test are scored with it: every token after the first, the model's metrics.
    assert kn["val_loss"] == pytest.approx(nll(kneser_ney_probs(c, *val, kn["discount"])) / 299)
    test_nll = nll(kneser_ney_probs(c, *test, kn["discount"]))
    assert kn["test_loss"] == pytest.approx(test_nll / 299)
    assert kn["test_ppl"] == pytest.approx(math.exp(test_nll / 299))
    assert kn["test_word_ppl"] == pytest.approx(math.exp(test_nll / 120))
    assert kn["test_bpb"] == pytest.approx(test_nll / (math.log(2) * 700))
    assert uni["test_loss"] > max(jm["test_loss"], kn["test_loss"])
    assert floors["floor"] == min(("interpolated_bigram", "kneser_ney_bigram"), key=lambda k: floors[k]["test_loss"])


@needs_mini
def test_floors_are_computed_once_per_token_cache_and_reach_the_summary(tmp_path, monkeypatch):
    overrides = [f"data.local_dir={MINI}", *TINY]
    cfg = compose_config(overrides)
    tokenizer, splits = load_splits(cfg.data, cfg.tokenizer)
    path = cache_dir(cfg.data, cfg.tokenizer) / FLOORS_FILE
    path.unlink(missing_ok=True)
    floors = load_floors(cfg.data, cfg.tokenizer, splits, tokenizer.vocab_size)
    assert json.loads(path.read_text()) == floors
    assert floors[floors["floor"]]["test_loss"] < floors["unigram"]["test_loss"] < math.log(tokenizer.vocab_size)
    monkeypatch.setattr("lmlab.data.floors.compute_floors", lambda *a: pytest.fail("computed twice"))
    assert load_floors(cfg.data, cfg.tokenizer, splits, tokenizer.vocab_size) == floors

    # A run carries them into its summary.json (a bug arm's, which says so: tests/test_bugs.py).
    run_dir = tmp_path / "run"
    r = run_cli([*overrides, "+variant=bug_drop_eos", "train.max_steps=2", "train.eval_every=2", "eval.sample_tokens=0",
                 "logger=none", f"hydra.run.dir={run_dir}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["floors"] == floors and summary["bugs"] == ["drop_eos_targets"]
    assert "bug switch on: bugs.drop_eos_targets" in r.stdout + r.stderr


def test_the_data_package_never_imports_the_model():
    code = "import sys, lmlab.data, lmlab.data.floors; sys.exit('lmlab.model' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
