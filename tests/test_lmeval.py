"""lm-evaluation-harness scores an exported run: on lmlab's own text, counts and the harness's
windows it reproduces lmlab's NLL; its wikitext task differs by its text and word count alone."""
import re

import pytest

from lmlab.lmeval import LmEvalConfig, compare, table

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed: pip install -c constraints-cpu.txt "
                                      "-e '.[lmeval]' (kept out of dev: heavy)")


def test_the_harness_reproduces_lmlabs_numbers(tiny_run, tmp_path):
    cfg = LmEvalConfig(checkpoint=str(tiny_run / "checkpoints" / "best.pt"), out=str(tmp_path / "hf"), limit=3,
                       batch_size=64)
    s = compare(cfg)
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    # B (lmlab's model) and C (lm-eval through transformers) score the same windows of the same tokens.
    assert s["C"].nll == pytest.approx(s["B"].nll, rel=1e-6)
    assert s["C"].bpb == pytest.approx(s["B"].bpb, rel=1e-6)
    assert s["C"].word_ppl == pytest.approx(s["B"].word_ppl, rel=1e-5)
    assert (s["A"].n_words, s["A"].n_bytes) == (s["B"].n_words, s["B"].n_bytes) == (s["C"].n_words, s["C"].n_bytes)
    # A scores 3 EOS tokens more and starts documents with the previous one's context: close, not equal.
    assert s["A"].nll != s["B"].nll and s["A"].nll == pytest.approx(s["B"].nll, rel=0.01)
    # D: the harness's own wikitext task (detokenized text) divides by the same bytes; it counts fewer
    # words (re.split(r"\s+"), no word per line). Words of C and D are what the harness's word
    # perplexities imply, so C's equal to lmlab's checks the task's counts end to end.
    assert s["D"].n_bytes == s["C"].n_bytes and s["D"].n_words < s["C"].n_words
    assert s["D"].nll != pytest.approx(s["C"].nll, rel=1e-3)
    rows = [line for line in table(s).splitlines() if re.match(r"\| [ABCD] \|", line)]
    assert len(rows) == 4 and f"{s['C'].bpb:.5f}" in rows[2]
