"""Reference floors held to hand-computed numbers on a toy corpus, normalised for every history,
tuned on validation, cached once per token cache (recomputed when the estimators change), and
carried into summary.json."""
import itertools
import json
import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from lmlab.data import Split, floors_cost, load_splits
from lmlab.data.floors import (FLOORS_FILE, FLOORS_VERSION, KN_ORDERS, compute_floors, interpolated_bigram_probs,
                               kneser_ney_loss_and_gradient, kneser_ney_probs, load_floors, unigram_probs)
from lmlab.data.ngrams import count_ngrams
from lmlab.data.tokens import cache_dir
from tests.conftest import CORPUS, MINI, REPO, TINY, compose_config, needs_mini, run_cli

# V = 3, token 0 plays EOS. Pairs: (0,1) x2, (1,2) x3, (2,1), (2,0) x2, (1,1).
# Triples: 012, 121, 212, 120 x2, 201, 011, 112.
TRAIN = np.array([0, 1, 2, 1, 2, 0, 1, 1, 2, 0])
V = 3
F = Fraction


def test_counts_are_the_hand_counts():
    _, (t,) = count_ngrams(TRAIN, V, [np.array([0, 1, 2])])  # targets 1 (after 0) and 2 (after 0 1)
    assert t.next.tolist() == [1, 2]
    # Raw counts: c(0 1) = 2 of c(0 .) = 2 pairs after 0, one type; c(0 1 2) = 1 of c(0 1 .) = 2, two types.
    assert t.raw[1].count.tolist() == [2, 3] and t.raw[1].total.tolist() == [2, 4]
    assert t.raw[2].count.tolist() == [0, 1] and t.raw[2].total.tolist() == [0, 2]
    assert t.raw[2].types[:, 1].tolist() == [2, 0, 0]  # 0 1 2 and 0 1 1, seen once each
    # Continuation counts: N1+(. 1) = 3 (0 1, 2 1, 1 1), N1+(. w) summed over w = 5 distinct pairs;
    # N1+(. 1 2) = 3 (0 1 2, 2 1 2, 1 1 2), N1+(. 1 .) = 3 + N1+(. 1 1) = 4.
    assert t.continuation[0].count.tolist() == [3, 1] and t.continuation[0].total.tolist() == [5, 5]
    assert t.continuation[1].count.tolist() == [1, 3] and t.continuation[1].total.tolist() == [1, 4]
    assert t.continuation[1].types[:, 1].tolist() == [1, 0, 1]  # 1 1 once, 1 2 three times


def test_probabilities_equal_a_hand_computation():
    c, (t,) = count_ngrams(TRAIN, V, [np.array([1, 2, 0, 1])])  # targets: 2 after 1, 0 after 2, 1 after 0
    # Add-one unigram over all 10 training tokens (3, 4, 3 of each): (c + 1) / (10 + 3).
    np.testing.assert_allclose(unigram_probs(c, 1.0), [4 / 13, 5 / 13, 4 / 13])
    # Jelinek-Mercer, lambda 1/2: 1/2 c(a,b)/c(a) + 1/2 p_uni(b).
    expected = [F(1, 2) * F(3, 4) + F(1, 2) * F(4, 13), F(1, 2) * F(2, 3) + F(1, 2) * F(4, 13),
                F(1, 2) * F(2, 2) + F(1, 2) * F(5, 13)]
    np.testing.assert_allclose(interpolated_bigram_probs(c, t, 1.0, 0.5), [float(f) for f in expected])
    # Kneser-Ney bigram, D = 1/2 at both levels. Continuation unigram over the 5 pair types:
    # (max(N1+(. w) - D, 0) + D x 3 types / V) / 5 = [1/5, 3/5, 1/5].
    # p(2|1) = (3 - 1/2)/4 + (1/2 x 2/4) x 1/5;  p(0|2) = (2 - 1/2)/3 + (1/2 x 2/3) x 1/5;
    # p(1|0) = (2 - 1/2)/2 + (1/2 x 1/2) x 3/5.
    expected = [F(5, 8) + F(1, 20), F(1, 2) + F(1, 15), F(3, 4) + F(3, 20)]
    np.testing.assert_allclose(kneser_ney_probs(t, 2, [0.5, 0.5]), [float(f) for f in expected])


def test_a_trigram_probability_equals_a_hand_computation():
    _, (t,) = count_ngrams(TRAIN, V, [np.array([0, 1, 2])])
    d1, d2, d3 = F(2, 5), F(1, 2), F(3, 5)  # one discount per level: unigram, bigram, trigram
    # Level 1, continuation counts N1+(. w) = [1, 3, 1] over 5 pair types, 3 of them seen:
    # p1(2) = (1 - d1)/5 + d1 x 3/5 x 1/3 = 3/25 + 2/25 = 1/5;  p1(1) = (3 - d1)/5 + 2/25 = 3/5.
    p1_2 = (1 - d1) / 5 + d1 * F(3, 5) / 3
    p1_1 = (3 - d1) / 5 + d1 * F(3, 5) / 3
    assert (p1_2, p1_1) == (F(1, 5), F(3, 5))
    # Level 2, continuation counts after 1: N1+(. 1 2) = 3, N1+(. 1 1) = 1; total 4, 2 types:
    # p2(2|1) = (3 - d2)/4 + d2 x 2/4 x p1(2) = 5/8 + 1/20 = 27/40.
    p2 = (3 - d2) / 4 + d2 * F(2, 4) * p1_2
    assert p2 == F(27, 40)
    # Level 3, raw counts after 0 1: c(0 1 2) = 1, c(0 1 1) = 1; total 2, 2 types:
    # p(2|0 1) = (1 - d3)/2 + d3 x 2/2 x 27/40 = 1/5 + 81/200 = 121/200.
    p3 = (1 - d3) / 2 + d3 * F(2, 2) * p2
    assert p3 == F(121, 200)
    # The first target (1 after 0) has one token of history: the trigram model scores it with the
    # bigram level it interpolates (continuation counts): N1+(. 0 1) = 1 (2 0 1; the 0 1 opening
    # the corpus has nothing before it), total 1, 1 type:
    # p(1|0) = (1 - d2)/1 + d2 x 1/1 x p1(1) = 1/2 + 3/10 = 4/5.
    first = (1 - d2) + d2 * p1_1
    assert first == F(4, 5)
    np.testing.assert_allclose(kneser_ney_probs(t, 3, [float(d1), float(d2), float(d3)]), [float(first), float(p3)])


def _random_discounts(rng, order):
    """Modified Kneser-Ney discounts: level k's D1 < 1, D2 < 2, D3+ < 3."""
    return rng.uniform(0.05, 0.95, size=(order, 3)) * [1, 2, 3]


@pytest.mark.parametrize("vocab_extra", [0, 2])  # 2: tokens never seen in training at all
def test_every_conditional_distribution_sums_to_one(vocab_extra):
    vocab = V + vocab_extra
    rng = np.random.default_rng(0)
    for order in (2, *KN_ORDERS):
        # Every history of order - 1 tokens (seen and unseen), each followed by every token: blocks
        # [h, w] in one stream, the last token of each block scored given exactly h.
        histories = list(itertools.product(range(vocab), repeat=order - 1))
        stream = np.array([[*h, w] for h in histories for w in range(vocab)]).ravel()
        c, (t,) = count_ngrams(TRAIN, vocab, [stream])
        last = np.arange(len(histories) * vocab) * order + order - 2
        for discounts in ([0.75] * order, _random_discounts(rng, order)):
            probs = kneser_ney_probs(t, order, discounts)[last].reshape(len(histories), vocab)
            np.testing.assert_allclose(probs.sum(axis=1), 1.0)
            assert (probs > 0).all()
        if order == 2:
            probs = interpolated_bigram_probs(c, t, 0.3, 0.7)[last].reshape(len(histories), vocab)
            np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_the_first_tokens_shorter_histories_sum_to_one_too():
    vocab, order = V + 1, 5
    discounts = _random_discounts(np.random.default_rng(1), order)
    for length in range(1, order - 1):  # a split's targets 1 .. order - 2 have fewer than order - 1 tokens before them
        for h in itertools.product(range(vocab), repeat=length):
            _, targets = count_ngrams(TRAIN, vocab, [np.array([*h, w]) for w in range(vocab)])
            probs = [kneser_ney_probs(t, order, discounts)[-1] for t in targets]
            assert sum(probs) == pytest.approx(1.0) and min(probs) > 0


def test_the_tuning_gradient_matches_finite_differences():
    splits = _markov_splits(2, 4, sizes=(300, 200, 10))
    _, (t,) = count_ngrams(splits["train"].tokens, 4, [splits["validation"].tokens])
    discounts = _random_discounts(np.random.default_rng(2), 4)
    loss, gradient = kneser_ney_loss_and_gradient(t, 4, discounts)
    assert loss == pytest.approx(-np.log(kneser_ney_probs(t, 4, discounts)).mean())
    for index in np.ndindex(discounts.shape):
        step = np.zeros_like(discounts)
        step[index] = 1e-6
        numeric = (kneser_ney_loss_and_gradient(t, 4, discounts + step)[0] -
                   kneser_ney_loss_and_gradient(t, 4, discounts - step)[0]) / 2e-6
        assert gradient[index] == pytest.approx(numeric, rel=1e-4, abs=1e-8), index


def _split(name: str, tokens, n_words=4, n_bytes=20) -> Split:
    return Split(name, np.asarray(tokens), n_docs=1, n_words=n_words, n_bytes=n_bytes)


def _markov_splits(order: int, vocab: int, sizes=(400, 300, 300), seed=0) -> dict[str, Split]:
    """Splits drawn from one Markov chain whose next token depends on the previous `order` tokens."""
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(rng.dirichlet(np.full(vocab, 0.3), size=vocab ** order), axis=1)
    streams = []
    for n in sizes:
        out = [int(x) for x in rng.integers(vocab, size=order)]
        for u in rng.random(n - order):
            state = sum(x * vocab ** i for i, x in enumerate(out[-order:]))
            out.append(min(int(np.searchsorted(cdf[state], u)), vocab - 1))
        streams.append(out)
    return {"train": _split("train", streams[0]), "validation": _split("validation", streams[1]),
            "test": _split("test", streams[2], n_words=sizes[2] // 3, n_bytes=sizes[2] * 2)}


def test_floors_report_the_model_metrics_with_smoothing_tuned_on_validation():
    splits = _markov_splits(1, 6)  # bigrams know something the unigram does not
    floors = compute_floors(splits, 6)
    c, (val, test) = count_ngrams(splits["train"].tokens, 6, [splits["validation"].tokens, splits["test"].tokens])

    def nll(probs):
        return -np.log(probs).sum()

    # Each tuned parameter is the best on validation: moving any one of them scores validation no better.
    jm, uni = floors["interpolated_bigram"], floors["unigram"]
    for lam in (jm["lambda"] * 0.8, min(0.999, jm["lambda"] * 1.2)):
        assert nll(interpolated_bigram_probs(c, val, uni["alpha"], jm["lambda"])) <= \
            nll(interpolated_bigram_probs(c, val, uni["alpha"], lam)) + 1e-6
    for name in ("kneser_ney_bigram", "kneser_ney_3gram"):
        kn = floors[name]
        tuned = np.array(kn["discounts"])
        best = nll(kneser_ney_probs(val, kn["order"], tuned))
        for index in np.ndindex(tuned.shape):
            for factor in (0.8, 1.2):
                moved = tuned.copy()
                moved[index] = min(moved[index] * factor, 0.999 * (index[-1] + 1 if tuned.ndim == 2 else 1))
                assert best <= nll(kneser_ney_probs(val, kn["order"], moved)) + 1e-3, (name, index)
    # ... and validation and test are scored with it: every token after the first, the model's metrics.
    kn = floors["kneser_ney_bigram"]
    assert kn["order"] == 2 and uni["order"] == 1 and jm["order"] == 2 and floors["kneser_ney_5gram"]["order"] == 5
    assert kn["val_loss"] == pytest.approx(nll(kneser_ney_probs(val, 2, kn["discounts"])) / 299)
    test_nll = nll(kneser_ney_probs(test, 2, kn["discounts"]))
    assert kn["test_loss"] == pytest.approx(test_nll / 299)
    assert kn["test_ppl"] == pytest.approx(math.exp(test_nll / 299))
    assert kn["test_word_ppl"] == pytest.approx(math.exp(test_nll / 100))
    assert kn["test_bpb"] == pytest.approx(test_nll / (math.log(2) * 600))
    assert uni["test_loss"] > max(jm["test_loss"], kn["test_loss"])
    references = [name for name in floors if isinstance(floors[name], dict)]
    assert len(references) == 6
    assert floors["floor"] == min(references, key=lambda k: floors[k]["test_loss"])


def test_a_higher_order_scores_no_worse_where_the_text_has_long_range_structure():
    # Each token depends on the four before it: every extra token of history helps.
    floors = compute_floors(_markov_splits(4, 4, sizes=(30_000, 4_000, 4_000)), 4)
    losses = [floors[name]["test_loss"] for name in
              ("unigram", "kneser_ney_bigram", "kneser_ney_3gram", "kneser_ney_4gram", "kneser_ney_5gram")]
    assert losses == sorted(losses, reverse=True), losses
    assert losses[-1] < losses[-2] - 0.1 and floors["floor"] == "kneser_ney_5gram"


def test_floors_of_an_older_version_are_recomputed(tmp_path, monkeypatch):
    monkeypatch.setattr("lmlab.data.floors.cache_dir", lambda data_cfg, tok_cfg: tmp_path)
    old = {"version": 1, "floor": "kneser_ney_bigram", "kneser_ney_bigram": {"test_loss": 1.0, "discount": 0.8}}
    (tmp_path / FLOORS_FILE).write_text(json.dumps(old))
    floors = load_floors(None, None, _markov_splits(1, 6), 6)
    assert floors["version"] == FLOORS_VERSION == 2 and "kneser_ney_5gram" in floors
    assert json.loads((tmp_path / FLOORS_FILE).read_text()) == floors


def test_floors_are_computed_once_per_token_cache_and_reach_the_summary(tmp_path, monkeypatch):
    overrides = [*CORPUS, *TINY]
    cfg = compose_config(overrides)
    tokenizer, splits = load_splits(cfg.data, cfg.tokenizer)
    path = cache_dir(cfg.data, cfg.tokenizer) / FLOORS_FILE
    path.unlink(missing_ok=True)
    floors = load_floors(cfg.data, cfg.tokenizer, splits, tokenizer.vocab_size)
    assert json.loads(path.read_text()) == floors
    assert floors[floors["floor"]]["test_loss"] < floors["kneser_ney_bigram"]["test_loss"] < \
        floors["unigram"]["test_loss"] < math.log(tokenizer.vocab_size)
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


REFERENCE = json.loads((REPO / "tests" / "data" / "floors_reference.json").read_text())
REAL_TEXT = {"kjv-bpe512": pytest.param([*CORPUS, "tokenizer.vocab_size=512"], id="kjv-bpe512"),
             **{f"wikitext-2-mini-bpe{v}": pytest.param([f"data.local_dir={MINI}", f"tokenizer.vocab_size={v}"],
                                                        marks=needs_mini, id=f"wikitext-2-mini-bpe{v}")
                for v in (384, 8192)}}


@pytest.mark.parametrize("name", [pytest.param(k, marks=p.marks, id=p.id) for k, p in REAL_TEXT.items()])
def test_real_text_scores_what_the_table_per_order_scored(name):
    """tests/data/floors_reference.json holds the floors of three token caches as computed at commit
    484911f, when counting kept a sorted table of every order's k-grams (np.unique per order): the
    windowed counting reproduces every metric and tuned smoothing of them to 1e-9."""
    cfg = compose_config(REAL_TEXT[name].values[0])
    tokenizer, splits = load_splits(cfg.data, cfg.tokenizer)
    floors = compute_floors(splits, tokenizer.vocab_size)
    assert floors["floor"] == REFERENCE[name]["floor"]
    for key, entry in REFERENCE[name].items():
        if isinstance(entry, dict):
            assert floors[key].keys() == entry.keys()
            for field, value in entry.items():
                assert np.asarray(floors[key][field]) == pytest.approx(np.asarray(value), rel=0, abs=1e-9), (key, field)


def test_the_floors_hold_under_24_bytes_per_training_token(capsys):
    # 4M tokens: where a table of every order's k-grams (np.unique per order) peaked at ~120 bytes a token.
    result = floors_cost.main(["--tokens", "4000000", "--eval-tokens", "10000"])
    assert result["traced_bytes_per_token"] <= 24, result
    p = 1 / np.arange(1, 8193)
    p /= p.sum()
    assert result["test_loss"] == pytest.approx(-(p * np.log(p)).sum(), abs=0.01)  # independent draws: the Zipf entropy
    out = capsys.readouterr().out
    assert "4,000,000 training tokens" in out and f"{result['traced_bytes_per_token']:.1f} bytes/token" in out
