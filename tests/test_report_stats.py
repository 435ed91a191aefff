"""The report's numbers on known inputs: seed spreads, Welch's verdicts, the seeds rule, and the
scaling fit recovering the exponent of synthetic power-law points."""
import math

import numpy as np
import pytest

from lmlab.report.scaling import FULL, POWER, fit_scaling
from lmlab.report.stats import Spread, aligned_documents, compare, document_bootstrap, holm, needs_more_seeds

BASE = Spread([5.00, 5.02, 4.98])  # mean 5.00, SD 0.02


def test_spread_is_the_sample_standard_deviation_and_one_seed_has_none():
    assert Spread([1.0, 2.0, 3.0, 4.0]).sd == pytest.approx(math.sqrt(5 / 3))  # n - 1 in the denominator
    assert Spread([4.2]).mean == 4.2 and Spread([4.2]).sd is None


def test_a_clear_difference_is_distinguishable_with_welchs_interval():
    arm = Spread([5.30, 5.31, 5.29])  # SD 0.01
    c = compare(arm, BASE)
    # By hand: se = sqrt(0.01^2/3 + 0.02^2/3) = 0.012910; Welch-Satterthwaite df = 2.941,
    # whose 97.5% t quantile is 3.219: the interval is 0.300 +- 0.0416.
    se = math.sqrt(0.01 ** 2 / 3 + 0.02 ** 2 / 3)
    assert c.diff == pytest.approx(0.30)
    assert (c.low, c.high) == (pytest.approx(0.30 - 3.219 * se, abs=2e-4), pytest.approx(0.30 + 3.219 * se, abs=2e-4))
    assert c.distinguishable and c.p < 0.001 and c.verdict.startswith("yes")


def test_a_difference_inside_the_noise_is_not():
    c = compare(Spread([5.01, 4.97, 5.03]), BASE)
    assert c.low < 0 < c.high and c.distinguishable is False and c.verdict.startswith("no")


def test_one_seed_or_no_variation_gives_no_verdict():
    for arm, base, reason in [(Spread([5.3]), BASE, "1 seed"), (Spread([5.3, 5.3]), Spread([5.0, 5.0]), "do not vary")]:
        c = compare(arm, base)
        assert c.low is None and c.distinguishable is None and reason in c.verdict
        assert c.diff == pytest.approx(0.3)


def test_arms_within_twice_the_spread_need_three_seeds():
    assert needs_more_seeds(Spread([5.02, 5.04]), BASE)  # 0.03 apart; twice the baseline's SD is 0.04
    assert not needs_more_seeds(Spread([5.03, 5.05, 5.04]), BASE)  # it has its 3 seeds
    assert not needs_more_seeds(Spread([5.30, 5.31]), BASE)  # far outside the noise: 2 seeds do


SIZES = np.repeat([1e5, 2e5, 4e5, 8e5, 1.6e6], 2)  # 5 sizes x 2 seeds


def test_the_fit_recovers_the_exponent_and_the_irreducible_loss():
    rng = np.random.default_rng(0)
    losses = 2.0 + 5.0 * (SIZES / 1e6) ** -0.3 + rng.normal(0, 0.002, len(SIZES))
    fit = fit_scaling(SIZES, losses)
    assert fit.form == FULL and fit.note == ""
    assert fit.params["alpha"] == pytest.approx(0.3, abs=0.005) and fit.params["E"] == pytest.approx(2.0, abs=0.05)
    assert fit.next_n == pytest.approx(3.2e6)  # the sweep's doubling, once more
    assert fit.low < 2.0 + 5.0 * 3.2 ** -0.3 < fit.high and fit.high - fit.low < 0.05


def test_without_an_identifiable_e_it_fits_a_power_law_and_says_why():
    rng = np.random.default_rng(0)
    losses = 4.0 * (SIZES / 1e6) ** -0.1 + rng.normal(0, 0.01, len(SIZES))
    fit = fit_scaling(SIZES, losses)
    assert fit.form == POWER and fit.note.startswith("E left out")
    assert fit.params["alpha"] == pytest.approx(0.1, abs=0.01) and set(fit.params) == {"A", "alpha"}
    assert fit.low < 4.0 * 3.2 ** -0.1 < fit.high


def test_fewer_than_four_sizes_are_not_fitted():
    assert fit_scaling(SIZES[:6], np.linspace(5, 4, 6)) == "3 model sizes; fitting L(N) needs at least 4"


def test_the_same_seeds_are_paired_and_other_seeds_get_welch():
    seeds = ["0", "1", "2"]
    base = Spread([5.00, 5.02, 4.98], seeds)
    c = compare(Spread([5.30, 5.31, 5.29], seeds), base)
    # By hand: per-seed differences 0.30, 0.31, 0.31 - 0.02 ... = (0.30, 0.29, 0.31): mean 0.30, SD 0.01,
    # se 0.01 / sqrt(3); the 97.5% t quantile for 2 degrees of freedom is 4.303.
    half = 4.303 * 0.01 / math.sqrt(3)
    assert c.test == "paired t"
    assert (c.low, c.high) == (pytest.approx(0.30 - half, abs=2e-4), pytest.approx(0.30 + half, abs=2e-4))
    assert compare(Spread([5.30, 5.31, 5.29], ["0", "1", "3"]), base).test == "paired t (seeds 0, 1)"
    assert compare(Spread([5.30, 5.31, 5.29], ["0", "4", "3"]), base).test == "Welch"  # one seed in common
    assert compare(Spread([5.30, 5.31, 5.29]), base).test == "Welch"  # seeds unknown
    same = compare(Spread([5.10, 5.12, 5.08], seeds), base)  # the same shift on every seed
    assert same.low is None and "per-seed differences do not vary" in same.verdict


def test_holm_on_known_p_values():
    # By hand, m = 4: sorted 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> kept at 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1, never below an earlier one
    assert holm([0.02]) == [0.02] and holm([]) == []


def _documents(rng, n_docs: int, shift: float, seeds: int, paired: bool = True, shared_sd: float = 0.1,
               seed_sd: float = 0.03) -> tuple[list, list]:
    """Per-seed (doc_nll, doc_tokens) of two arms over one draw of documents from a population in
    which the arm's loss per token is the baseline's plus `shift`: per-document difficulty, a
    per-document effect with mean 0, each seed's offset (shared by both arms where `paired`), each
    run's own offset and per-document noise."""
    tokens = rng.integers(20, 400, n_docs)
    rate = rng.normal(4.0, 0.5, n_docs)
    arm_rate = rate + shift + rng.normal(0, 0.3, n_docs)
    shared = rng.normal(0, shared_sd, seeds)

    def runs(r, offsets):
        offsets = offsets + rng.normal(0, seed_sd, seeds)
        return [((r + off + rng.normal(0, 0.05, n_docs)) * tokens, tokens) for off in offsets]

    return runs(arm_rate, shared), runs(rate, shared if paired else rng.normal(0, shared_sd, seeds))


@pytest.mark.parametrize("seeds", [3, 5, 10])
@pytest.mark.parametrize("paired", [True, False])
def test_the_seeds_and_documents_interval_covers_at_its_level(seeds, paired):
    """Seed noise, per-document difficulty and effect: the interval covers the population's
    difference 95% of the time (the percentile bootstrap it replaces covered 0.75-0.85 at 3 seeds)."""
    rng, shift, replications = np.random.default_rng(seeds + 10 * paired), 0.1, 300
    covered = 0
    for _ in range(replications):
        arm, base = _documents(rng, n_docs=60, shift=shift, seeds=seeds, paired=paired)
        low, high = document_bootstrap(arm, base, paired=paired)
        covered += low <= shift <= high
    # 95% nominal: 285 of 300 expected, binomial SD 3.8; 276 is 2.4 SD below.
    assert 276 <= covered <= 299, covered


def test_pairing_removes_a_shared_seed_offset_and_ignoring_it_does_not():
    """A large offset per seed, shared by both arms: paired, the interval is narrow and covers;
    unpaired (each arm's seeds drawn apart), it must be wide enough to cover that offset's noise."""
    arm, base = _documents(np.random.default_rng(3), n_docs=60, shift=0.1, seeds=3, shared_sd=0.0, seed_sd=0.01)
    arm, base = ([(nll + offset * tokens, tokens) for (nll, tokens), offset in zip(runs, (0.0, 1.0, -1.0))]
                 for runs in (arm, base))
    paired, unpaired = document_bootstrap(arm, base, paired=True), document_bootstrap(arm, base)
    assert paired[0] <= 0.1 <= paired[1] and paired[1] - paired[0] < 0.4
    assert unpaired[1] - unpaired[0] > 5 * (paired[1] - paired[0])
    # Swapping the baseline's seeds breaks the pairs: the interval then carries the offsets' noise.
    swapped = document_bootstrap(arm, base[1:] + base[:1], paired=True)
    assert swapped[1] - swapped[0] > 5 * (paired[1] - paired[0])


def test_one_seed_gets_no_interval_and_unscored_documents_no_nan():
    arm, base = _documents(np.random.default_rng(0), n_docs=30, shift=0.1, seeds=2)
    assert "1 seed" in document_bootstrap(arm[:1], base[:1], paired=True)
    assert "1 seed" in document_bootstrap(arm[:1], base)
    # A shrunk evaluation (eval.max_batches) scores no token of the last 10 documents.
    scored = np.arange(30) < 20
    cut = [(np.where(scored, nll, 0.0), np.where(scored, tokens, 0)) for nll, tokens in arm + base]
    low, high = document_bootstrap(cut[:2], cut[2:], paired=True)
    assert math.isfinite(low) and math.isfinite(high) and low < high
    short = [(arm[0][0][:29], arm[0][1][:29])] + arm[1:]
    assert "different numbers of test documents (29, 30)" in document_bootstrap(short, base)


def test_documents_are_paired_by_their_hash_and_other_text_is_never_compared():
    first = {"doc_nll": [1.0, 2.0, 3.0], "doc_tokens": [1, 2, 3], "doc_hash": ["a", "b", "a"]}
    moved = {"doc_nll": [20.0, 10.0, 30.0], "doc_tokens": [2, 1, 3], "doc_hash": ["b", "a", "a"]}
    assert aligned_documents([first, moved]) == [([1.0, 3.0, 2.0], [1, 3, 2]), ([10.0, 30.0, 20.0], [1, 3, 2])]
    other = {**moved, "doc_hash": ["b", "a", "c"]}
    assert "different test text" in aligned_documents([first, other])
    unnamed = {key: first[key] for key in ("doc_nll", "doc_tokens")}
    assert aligned_documents([unnamed, unnamed]) == [([1.0, 2.0, 3.0], [1, 2, 3])] * 2  # older files: by position
    assert "some runs' test_scores.json name their documents" in aligned_documents([first, unnamed])


def test_pairs_are_matched_by_seed_whatever_the_order_and_a_missing_seed_leaves_the_others_paired():
    arm = Spread([5.30, 5.31, 5.29], ["0", "1", "2"])
    # By seed the differences are 0.30, 0.29, 0.31; by list position they would be 0.32, 0.31, 0.27.
    base = Spread([4.98, 5.00, 5.02], ["2", "0", "1"])
    c = compare(arm, base)
    half = 4.303 * 0.01 / math.sqrt(3)
    assert c.test == "paired t" and c.diff == pytest.approx(0.30)
    assert (c.low, c.high) == (pytest.approx(0.30 - half, abs=2e-4), pytest.approx(0.30 + half, abs=2e-4))
    more = compare(arm, Spread([4.98, 5.00, 5.02, 7.0], ["2", "0", "1", "3"]))  # seed 3 only the baseline ran
    assert more.test == "paired t (seeds 0, 1, 2)" and (more.low, more.high) == (c.low, c.high)
