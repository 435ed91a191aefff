"""lm-evaluation-harness scores an exported run: on lmlab's own text, counts and the harness's
windows it reproduces lmlab's NLL; its wikitext task differs by its text and word count alone; the
printed report says what A - B is made of, and nothing else reaches stderr."""
import importlib.util
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lmlab.data import load_splits, packed_rows, strided_rows
from lmlab.lmeval import LmEvalConfig, compare, quiet_libraries, report, target_rows
from tests.conftest import MINI, REPO, TINY, needs_mini, run_cli

needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason="lm-evaluation-harness is not installed: pip install -c constraints-cpu.txt "
                                          "-e '.[lmeval]' (kept out of dev: heavy)")


@pytest.mark.parametrize("rows", [packed_rows(50, 8), strided_rows(50, 8, 3)], ids=["packed", "strided"])
def test_target_rows_score_each_target_alone_from_its_windows_context(rows):
    targets = np.arange(1, 50)
    cut = target_rows(rows, targets)
    for target, (start, end, score_from) in zip(targets, cut):
        (scoring,) = [r for r in rows if r[2] <= target < r[1]]
        assert (start, end, score_from) == (scoring[0], target + 1, target)


def test_only_what_does_not_apply_is_dropped_from_the_libraries_logs():
    pytest.importorskip("transformers")
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    logger = logging.getLogger("transformers.tokenization_utils_base")
    logger.addHandler(handler)
    try:
        with quiet_libraries():
            logger.warning("Token indices sequence length is longer than the specified maximum sequence length")
            logger.warning("another warning")
            logger.error("an error")
        logger.warning("Token indices sequence length is longer than the specified maximum sequence length")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage()[:20] for r in seen] == ["another warning", "an error", "Token indices sequen"]


def hf_nll(hf_model, context: np.ndarray, target: int) -> float:
    """transformers' NLL of `target` after `context`: the exported model, apart from lmlab's scoring."""
    logits = hf_model(torch.tensor(context, dtype=torch.long)[None]).logits[0, -1]
    return -torch.log_softmax(logits.double(), -1)[target].item()


@pytest.fixture(scope="module")
def wikitext_run(tmp_path_factory) -> Path:
    """A run of the TINY model on WikiText's own files, test split scored in full: lm-eval's wikitext
    task (row D) scores WikiText runs only."""
    run_dir = tmp_path_factory.mktemp("wikitext-run")
    r = run_cli([f"data.local_dir={MINI}", *TINY, "train.max_steps=30", "train.eval_every=15", "schedule=none",
                 "schedule.peak_lr=3e-3", "eval.sample_tokens=0", "logger=none", f"hydra.run.dir={run_dir}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir


@needs_lm_eval
@needs_mini
def test_the_harness_reproduces_lmlabs_numbers(wikitext_run, tmp_path):
    import transformers

    ckpt = wikitext_run / "checkpoints" / "best.pt"
    c = compare(LmEvalConfig(checkpoint=str(ckpt), out=str(tmp_path / "hf"), limit=3, batch_size=64))
    s, gap = c.scores, c.gap
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    # B (lmlab's model) and C (lm-eval through transformers) score the same windows of the same tokens.
    assert s["C"].nll == pytest.approx(s["B"].nll, rel=1e-6)
    assert s["C"].bpb == pytest.approx(s["B"].bpb, rel=1e-6)
    assert s["C"].word_ppl == pytest.approx(s["B"].word_ppl, rel=1e-5)
    assert (s["A"].n_words, s["A"].n_bytes) == (s["B"].n_words, s["B"].n_bytes) == (s["C"].n_words, s["C"].n_bytes)
    # A - B: the 3 EOS only A scores and the first token only B scores, each as transformers scores
    # it in its own window (A's non-overlapping windows of 32, B's first after an EOS).
    run = OmegaConf.create(torch.load(ckpt, weights_only=False)["config"])
    tokens = np.asarray(load_splits(run.data, run.tokenizer)[1]["test"].tokens)
    eos_id = int(tokens[-1])  # every document ends in EOS
    eos = np.flatnonzero(tokens == eos_id)[:3]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    with torch.no_grad():
        assert gap.eos == pytest.approx(sum(hf_nll(hf, tokens[(t - 1) // 32 * 32:t], eos_id) for t in eos), rel=1e-5)
        assert gap.first == pytest.approx(hf_nll(hf, np.array([eos_id]), tokens[0]), rel=1e-5)
    assert (gap.n_eos, gap.total) == (3, pytest.approx(s["A"].nll - s["B"].nll))
    assert gap.shared + gap.eos == pytest.approx(s["A"].nll) and gap.n_shared == eos[-1] - 3
    # D: the harness's own wikitext task (detokenized text) divides by the same bytes; it counts fewer
    # words (re.split(r"\s+"), no word per line). Words of C and D are what the harness's word
    # perplexities imply, so C's equal to lmlab's checks the task's counts end to end.
    assert s["D"].n_bytes == s["C"].n_bytes and s["D"].n_words < s["C"].n_words
    assert s["D"].nll != pytest.approx(s["C"].nll, rel=1e-3)
    text = report(c)
    rows = [line for line in text.splitlines() if re.match(r"\| [ABCD] \|", line)]
    assert len(rows) == 4 and f"{s['C'].bpb:.5f}" in rows[2]
    assert "the first 3 documents only" in rows[0] and "as in summary.json" not in rows[0]
    assert f"C - B: {s['C'].nll - s['B'].nll:+.1e} nats, {s['C'].bpb - s['B'].bpb:+.1e} bits per byte" in text
    assert f"{gap.eos:+10.2f}  the 3 EOS ending documents, scored by A only ({gap.eos / 3:.2f} nats each" in text
    assert f"{gap.windows:+10.2f}  the windows: the {gap.n_shared:,} tokens both score" in text


@needs_lm_eval
def test_the_command_prints_the_report_and_only_errors_or_warnings_that_apply(tiny_run, tmp_path):
    r = run_cli([f"checkpoint={tiny_run / 'checkpoints' / 'best.pt'}", f"out={tmp_path / 'hf'}", "limit=2",
                 "batch_size=64"], cwd=REPO, module="lmlab.lmeval")
    assert r.returncode == 0, r.stderr[-3000:]
    assert [line[:4] for line in r.stdout.splitlines() if re.match(r"\| [ABCD] \|", line)] == ["| A ", "| B ", "| C "]
    assert r.stdout.rstrip().splitlines()[-1].startswith("D: not scored: lm-eval's wikitext task")  # not WikiText
    # The documents are longer than the model's 32 tokens (lm-eval cuts them into windows), the
    # tasks are complete, the metadata is passed: nothing of it is news to the user.
    for noise in ("Running loglikelihood requests", "Token indices sequence length", "is defined, but",
                  "Custom kwargs", "Writing model shards", "Loading weights"):
        assert noise not in r.stderr


@needs_lm_eval
def test_a_run_on_another_corpus_is_told_why_it_has_no_wikitext_row(tiny_run, tmp_path):
    text_run = tiny_run / "checkpoints" / "best.pt"  # the embedded corpus: data.kind=text
    from lmlab.lm_eval_tasks.utils import run_wikitext_test_split

    c = compare(LmEvalConfig(checkpoint=str(text_run), out=str(tmp_path / "hf"), limit=2, batch_size=64))
    assert set(c.scores) == {"A", "B", "C"}
    assert c.scores["C"].nll == pytest.approx(c.scores["B"].nll, rel=1e-6)
    assert report(c).splitlines()[-1] == ("D: not scored: lm-eval's wikitext task undoes WikiText's tokenization "
                                          "(` @-@ `, ` , `), and this run's corpus is data.kind=text")
    # lm_eval's own CLI with --tasks lmlab_wikitext reaches the same function: refused, not scored.
    with pytest.raises(ValueError, match="lmlab_wikitext scores WikiText runs only; .* data.kind=text: use lmlab_text"):
        run_wikitext_test_split(str(text_run))
