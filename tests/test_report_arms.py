"""How the report forms arms and what it compares: exact values, a seed-only sweep, one corpus and
tokenizer per nats/token comparison, and plain words about the floor."""
import json
import math
import re

import yaml

from lmlab.report import write_report
from lmlab.report.jobs import Job
from tests.test_report import FLOORS, _done, _job


def _arm_rows(report: str) -> dict[str, str]:
    return {line.split(" | ")[0][2:]: line for line in report.splitlines() if re.match(r"\| .+ \| \d+/\d+ \|", line)}


def test_a_seed_only_sweep_is_one_arm_with_its_seeds(tmp_path):
    for seed, loss in enumerate([4.00, 4.02, 3.98]):
        _job(tmp_path, seed, [f"train.seed={seed}"], _done(60.0, math.exp(loss)), [6.0, 4.5])
    rows = _arm_rows(write_report(tmp_path).read_text())
    assert list(rows) == ["all jobs"]
    assert rows["all jobs"].startswith("| all jobs | 3/3 | 4.000 ± 0.020 |")


def test_arms_are_grouped_by_exact_values_and_labelled_apart(tmp_path):
    num = 0
    for tokens, losses in [("10240000", [4.0, 4.1]), ("10200000", [3.0, 3.1])]:
        for seed, loss in enumerate(losses):
            _job(tmp_path, num, [f"train.max_tokens={tokens}", f"train.seed={seed}"], _done(60.0, math.exp(loss)),
                 [6.0, 4.5])
            num += 1
    rows = _arm_rows(write_report(tmp_path).read_text())
    # Both round to 1.02e+07: the labels show the exact values where the rounded ones would collide.
    assert set(rows) == {"train.max_tokens=10240000", "train.max_tokens=10200000"}
    assert rows["train.max_tokens=10240000"].startswith("| train.max_tokens=10240000 | 2/2 | 4.050 ± 0.071 |")


def test_an_arm_above_the_floor_is_said_plainly(tmp_path):
    for seed, loss in enumerate([5.90, 5.91, 5.92]):  # the floor (KN bigram) is at 4.4
        for num, arm in enumerate(["baseline", "warmup"]):
            _job(tmp_path, 2 * seed + num, [f"+variant={arm}", f"train.seed={seed}"],
                 _done(60.0, math.exp(loss + num), floors=FLOORS), [6.0, 5.9])
    report = write_report(tmp_path).read_text()
    assert "x its seed spread" not in report
    assert ("The baseline does not beat the floor (Kneser-Ney bigram): its mean test loss is 1.510 nats/token "
            "above the floor's.") in report


def _corpus_job(root, num, arm, seed, loss, vocab):
    job = _job(root, num, [f"+variant={arm}", f"train.seed={seed}", f"tokenizer.vocab_size={vocab}"],
               _done(60.0, math.exp(loss), test_bpb=loss / 4, val_bpb=loss / 4), [6.0, loss])
    config = {"data": {"name": "wikitext2", "kind": "wikitext", "local_dir": "/data/mini"},
              "tokenizer": {"kind": "bpe", "vocab_size": vocab}}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))


def test_nats_per_token_are_never_compared_across_tokenizers(tmp_path):
    num = 0
    for vocab, base in [(384, 4.0), (8192, 6.0)]:
        for arm, shift in [("baseline", 0.0), ("warmup", -0.1)]:
            for seed in range(2):
                loss = base + shift + 0.01 * seed * (1 + (arm == "warmup"))
                _corpus_job(tmp_path / f"sweep{vocab}", num, arm, seed, loss, vocab)
                num += 1
    report = write_report(tmp_path).read_text()
    sections = report.split("## Arms against the baseline")[1:]
    assert len(sections) == 2  # one comparison per tokenizer
    assert "tokenizer bpe 384" in sections[0].splitlines()[0] and "tokenizer bpe 8192" in sections[1].splitlines()[0]
    for section, vocab, other in [(sections[0], 384, 8192), (sections[1], 8192, 384)]:
        rows = _arm_rows(section)
        assert set(rows) == {f"variant=baseline, tokenizer.vocab_size={vocab}",
                             f"variant=warmup, tokenizer.vocab_size={vocab}"}
        assert "| -0.095 [" in rows[f"variant=warmup, tokenizer.vocab_size={vocab}"]
        assert f"tokenizer.vocab_size={other} |" not in section.split("## ")[0]
    # Plots by a swept key in bits/byte (comparable across tokenizers), validation curves per tokenizer.
    assert "(best_val_bpb_by_tokenizer.vocab_size.png)" in report and "best_val_ppl_by" not in report
    assert "(val_loss_curves.png)" in report and "(val_loss_curves_2.png)" in report


def test_no_scaling_fit_across_tokenizers(tmp_path):
    for num, (width, vocab) in enumerate([(64, 384), (96, 384), (128, 8192), (192, 8192)]):
        job = _job(tmp_path, num, [f"model.d_model={width}", f"tokenizer.vocab_size={vocab}"],
                   _done(60.0, math.exp(4.0 - num / 10), n_params_non_embedding=32 * width ** 2), [6.0])
        config = {"data": {"name": "wikitext2"}, "tokenizer": {"kind": "bpe", "vocab_size": vocab}}
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    report = write_report(tmp_path).read_text()
    assert "No fit: the jobs' nats/token are measured in several corpora or tokenizers" in report
    assert "L(N) =" not in report


def test_runs_whose_test_split_was_carved_otherwise_are_never_compared(tmp_path):
    """Same corpus folder and tokenizer, another split seed: other test articles, another section."""
    for num, (split_seed, loss) in enumerate([(0, 4.0), (0, 4.1), (1, 3.0), (1, 3.1)]):
        job = _job(tmp_path, num, [f"train.seed={num % 2}", f"data.split_seed={split_seed}"],
                   _done(60.0, math.exp(loss)), [6.0, loss])
        config = {"data": {"name": "wikitext2", "local_dir": "/data/raw", "pool": True, "holdout": 12,
                           "split_seed": split_seed}, "tokenizer": {"kind": "bpe", "vocab_size": 1024}}
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    sections = write_report(tmp_path).read_text().split("## Arms against the baseline and the floor")[1:]
    assert [section.splitlines()[0] for section in sections] == [
        f": data wikitext2 (/data/raw, pool=True, holdout=12, split_seed={seed}), tokenizer bpe 1024"
        for seed in (0, 1)]


def _scored_job(root, num, arm, seed, doc_nll, hashes):
    tokens = [10] * len(doc_nll)
    loss = sum(doc_nll) / sum(tokens)
    job = _job(root, num, [f"+variant={arm}", f"train.seed={seed}"], _done(60.0, math.exp(loss)), [6.0, loss])
    (job / "test_scores.json").write_text(json.dumps({"doc_nll": doc_nll, "doc_tokens": tokens, "doc_hash": hashes,
                                                      "position_loss": [loss], "position_tokens": [40]}))


def test_the_documents_interval_needs_two_seeds_and_the_same_text(tmp_path):
    same, other = ["a", "b", "c", "d"], ["a", "b", "c", "x"]
    for seed, shift in enumerate([0.0, 0.3, -0.2]):
        _scored_job(tmp_path, 3 * seed, "baseline", seed, [40 + shift, 42, 38 + shift, 41], same)
        # In another order: documents pair by their hashes, not their position.
        _scored_job(tmp_path, 3 * seed + 1, "warmup", seed, [40 + shift, 37 + shift / 2, 41.5, 39 + shift], same[::-1])
        if seed < 2:  # scored on another test split
            _scored_job(tmp_path, 3 * seed + 2, "decay", seed, [40, 41, 39 + shift, 40], other)
    _scored_job(tmp_path, 9, "size", 0, [30, 31, 32, 33], same)  # 1 seed
    report = write_report(tmp_path).read_text()
    rows = _arm_rows(report)
    assert re.search(r"\| -0\.\d{3} \[-0\.\d{3}, [-+]0\.\d{3}\] paired t \| \[-0\.\d{3}, [-+]0\.\d{3}\] \|",
                     rows["variant=warmup"]), rows["variant=warmup"]
    assert "No document interval for `variant=decay`: the runs were scored on different test text" in report
    assert "No document interval for `variant=size`: 1 seed: no interval over seeds and documents" in report
    assert "nan" not in report


def test_each_arms_last_tenth_of_training_is_reported_against_the_margin(tmp_path):
    """A constant-LR curve still falling at its end is measured early: the report gives each arm's
    validation gain over its last 10% of steps (the evaluation at 90% of them minus the last), and
    says whether the baseline's is inside the declared margin."""
    def curve(last_gain):  # evaluations every 10 steps to 100; the one at step 90 is 90% of the run
        return [6.0 - 0.1 * i for i in range(10)] + [5.1 - last_gain]

    num = 0
    for arm, gains in [("baseline", [0.03, 0.02, 0.025]), ("decay", [0.001, 0.003, 0.002])]:
        for seed, gain in enumerate(gains):
            job = _job(tmp_path, num, [f"+variant={arm}", f"train.seed={seed}"], _done(60.0, math.exp(4.0)), [])
            (job / "metrics.jsonl").write_text("".join(json.dumps({"step": 10 * i, "val_loss": loss}) + "\n"
                                                       for i, loss in enumerate(curve(gain))))
            (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"rootcause": {"margin": 0.02}}))
            num += 1
    report = write_report(tmp_path).read_text()
    assert ("Validation loss gained over the last 10% of steps (the last evaluation at or before 90% of a run's "
            "steps minus its last; mean ± SD over seeds): `variant=baseline` 0.0250 ± 0.0050, `variant=decay` "
            "0.0020 ± 0.0010. The baseline's curve has not flattened: it gains more than the margin "
            "δ = 0.02 in its last 10% of steps.") in report
    # A run evaluated only within its last 10% of steps has no gain to give, and no error.
    assert Job(tmp_path, None, {}, metrics=[{"step": 95, "val_loss": 4.1}, {"step": 100, "val_loss": 4.0}]).late_gain is None
