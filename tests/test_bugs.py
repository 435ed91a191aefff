"""The seed's bugs as switches (config `bugs`): each changes exactly what it claims when on, nothing
when off, and refuses a setting where it could not act. (A bug arm's summary.json: tests/test_floors.py.)"""
import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException

from lmlab.config import BugsConfig
from lmlab.data import IGNORE, Sampler, Split, collate, document_rows, packed_rows, with_seed_bugs
from lmlab.distributed import Ranks
from lmlab.errors import ConfigError
from lmlab.scoring import evaluate
from lmlab.model import GPT, GPTConfig
from lmlab.step import batch_loss, device_batches
from lmlab.validation import validate
from tests.conftest import CORPUS, TINY, compose_config

EOS = 0
CFG = GPTConfig(vocab_size=50, d_model=32, n_heads=2, n_layers=2, d_ff=64, max_seq_len=32)
BUGS = ("drop_eos_targets", "eval_in_train_mode", "no_pad_mask")


def documents(lengths=(3, 17, 40, 8, 1, 12)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.concatenate([np.append(rng.integers(1, CFG.vocab_size, n), EOS) for n in lengths])


def padded_batch() -> dict:
    tokens = documents()
    batch = collate(tokens, document_rows(tokens, EOS, CFG.max_seq_len), EOS)
    assert not batch["pad_mask"].all() and (batch["y"] == EOS).any()  # padded, and EOS targets to drop
    return batch


def test_off_by_default_and_a_misspelt_switch_fails_before_compute():
    cfg = compose_config()
    assert dict(cfg.bugs) == {name: False for name in BUGS}
    assert all(not getattr(BugsConfig(), name) for name in BUGS)
    with pytest.raises(ConfigCompositionException, match="drop_eos"):
        compose_config(["bugs.drop_eos=true"])


def test_every_switch_off_leaves_the_batch_as_it_is():
    for bugs in (None, BugsConfig()):
        batch, reference = padded_batch(), padded_batch()
        out = with_seed_bugs(batch, bugs, EOS)
        assert set(out) == set(reference) and all(torch.equal(out[k], reference[k]) for k in reference)


def test_drop_eos_targets_removes_eos_targets_and_nothing_else():
    reference = padded_batch()
    out = with_seed_bugs(padded_batch(), BugsConfig(drop_eos_targets=True), EOS)
    assert not (out["y"] == EOS).any()
    was_eos = reference["y"] == EOS
    assert (out["y"][was_eos] == IGNORE).all() and torch.equal(out["y"][~was_eos], reference["y"][~was_eos])
    assert torch.equal(out["x"], reference["x"]) and torch.equal(out["pad_mask"], reference["pad_mask"])


def test_no_pad_mask_drops_the_mask_and_scores_the_padding_as_eos():
    reference = padded_batch()
    out = with_seed_bugs(padded_batch(), BugsConfig(no_pad_mask=True), EOS)
    assert "pad_mask" not in out and torch.equal(out["x"], reference["x"])
    real = reference["pad_mask"]
    assert torch.equal(out["y"][real], reference["y"][real]) and (out["y"][~real] == EOS).all()
    # What that costs is in the loss half: with right padding and causal attention no real token
    # attends to a padded key, so the real positions' logits do not change without the mask.
    torch.manual_seed(0)
    model = GPT(CFG).eval()
    with_mask, without = model(reference["x"], pad_mask=reference["pad_mask"]), model(out["x"])
    torch.testing.assert_close(without[real], with_mask[real], rtol=0, atol=1e-5)
    assert batch_loss(model, out, "cpu").item() != pytest.approx(batch_loss(model, reference, "cpu").item())


@pytest.mark.parametrize("bugs", [BugsConfig(drop_eos_targets=True), BugsConfig(no_pad_mask=True),
                                  BugsConfig(drop_eos_targets=True, no_pad_mask=True)])
def test_device_batches_put_the_bugs_in_and_divide_the_loss_by_the_targets_they_leave(bugs):
    tokens = documents()
    rows = document_rows(tokens, EOS, 16)
    plain, plain_n = device_batches(tokens, Sampler(rows, 4, seed=0), 2, EOS, False, torch.device("cpu"))
    bugged, bugged_n = device_batches(tokens, Sampler(rows, 4, seed=0), 2, EOS, False, torch.device("cpu"), bugs=bugs)
    # Every arm stops at the same amount of real data ...
    assert bugged_n == plain_n == sum(n for _, n in plain)
    assert any((b["y"] != p["y"]).any() for (b, _), (p, _) in zip(bugged, plain))
    # ... and its loss is a mean over the targets its bug leaves, as the seed's code computed it.
    assert [n for _, n in bugged] == [int((b["y"] != IGNORE).sum()) for b, _ in bugged] != [n for _, n in plain]
    # Two processes: each trains on its half, and the loss's denominator is the targets of both.
    halves = [device_batches(tokens, Sampler(rows, 4, seed=0), 2, EOS, False, torch.device("cpu"), Ranks(rank, 2),
                             bugs=bugs)[0] for rank in (0, 1)]
    for (b0, n0), (b1, n1) in zip(*halves):
        assert n0 == n1 == int((b0["y"] != IGNORE).sum() + (b1["y"] != IGNORE).sum())


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_eval_in_train_mode_scores_with_dropout_on(dropout):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**CFG.__dict__, "dropout": dropout})).eval()
    tokens = documents()
    split, rows = Split("v", tokens, 1, 10, 10), packed_rows(len(tokens), CFG.max_seq_len)
    right = evaluate(model, split, rows, EOS, 4, "cpu")
    bugged = evaluate(model, split, rows, EOS, 4, "cpu", train_mode=True)
    assert not model.training  # the caller's mode comes back
    if dropout:
        assert bugged.nll != pytest.approx(right.nll)
    else:  # no dropout: train mode computes exactly what eval mode does
        assert bugged.nll == right.nll


def test_no_pad_mask_needs_variable_length_batches():
    with pytest.raises(ConfigError, match="bugs.no_pad_mask.*data.packing=false"):
        validate(compose_config(["bugs.no_pad_mask=true"]))
    validate(compose_config(["+variant=bug_no_pad_mask"]))  # the arm sets data.packing=false itself


def test_the_trainer_hands_its_switches_to_the_batches_and_the_evaluation(monkeypatch, tmp_path):
    import lmlab.step
    import lmlab.train
    from lmlab.config import gpt_config, to_container
    from lmlab.data import load_splits
    from lmlab.tracking import NoRecords

    seen = {"batches": [], "eval_train_mode": []}
    put_back, score = lmlab.step.with_seed_bugs, lmlab.train.evaluate
    monkeypatch.setattr(lmlab.step, "with_seed_bugs",
                        lambda batch, bugs, eos: seen["batches"].append(dict(bugs)) or put_back(batch, bugs, eos))
    monkeypatch.setattr(lmlab.train, "evaluate",
                        lambda *a, train_mode, **kw: seen["eval_train_mode"].append(train_mode) or score(*a, **kw))
    cfg = compose_config([*CORPUS, *TINY, "train.max_steps=2", "train.eval_every=2",
                          "eval.max_batches=1", "eval.sample_tokens=0", "logger=none", "data.packing=false",
                          "bugs.drop_eos_targets=true", "bugs.eval_in_train_mode=true", "bugs.no_pad_mask=true"])
    tokenizer, splits = load_splits(cfg.data, cfg.tokenizer)
    lmlab.train.train(cfg, GPT(gpt_config(cfg, tokenizer.vocab_size)), tokenizer, splits, NoRecords(), tmp_path,
                      to_container(cfg))
    # Every training batch, every switch; each twice: trained on, and counted for the loss's denominator.
    assert seen["batches"] == [{name: True for name in BUGS}] * 2 * 2
    assert seen["eval_train_mode"] and all(seen["eval_train_mode"])  # validation and test alike


def test_the_eval_mode_bug_draws_its_dropout_masks_from_a_stream_of_its_own(tmp_path):
    """With dropout on, the bug arm trains exactly as the baseline of its seed does, however often it evaluates."""
    import lmlab.train
    from lmlab.checkpoint import load_checkpoint
    from lmlab.config import gpt_config, to_container
    from lmlab.data import load_splits
    from lmlab.tracking import NoRecords

    arms = {"baseline": [], "bug": ["bugs.eval_in_train_mode=true"],
            "bug, every 3 steps": ["bugs.eval_in_train_mode=true", "train.eval_every=3"]}
    weights, best = {}, {}
    for arm, overrides in arms.items():
        cfg = compose_config([*CORPUS, *TINY, "model.dropout=0.3", "train.max_steps=6", "train.eval_every=2",
                              "eval.max_batches=1", "eval.sample_tokens=0", "logger=none", *overrides])
        tokenizer, splits = load_splits(cfg.data, cfg.tokenizer)
        torch.manual_seed(cfg.train.seed)
        model = GPT(gpt_config(cfg, tokenizer.vocab_size))
        best[arm] = lmlab.train.train(cfg, model, tokenizer, splits, NoRecords(), tmp_path / arm,
                                      to_container(cfg))["best_val_loss"]
        weights[arm] = load_checkpoint(tmp_path / arm / "checkpoints" / "last.pt")["model"]
    for arm in ("bug", "bug, every 3 steps"):
        assert best[arm] != best["baseline"]  # the bug is on: dropout changes the scores
        assert all(torch.equal(weights[arm][key], weights["baseline"][key]) for key in weights["baseline"]), arm
