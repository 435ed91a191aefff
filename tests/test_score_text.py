"""Scoring any text with `python -m lmlab.evaluate`: a file, a folder of files or a folder with only
test/ is scored whole when it is not the run's own corpus (there is nothing to train, so nothing is
carved), and the command says how many documents and tokens it scored."""
import json

import pytest

from lmlab.evaluate import main
from tests.conftest import CORPUS, REPO, TINY, corpus_lines, run_cli


@pytest.fixture
def texts(tmp_path):
    lines = corpus_lines(40)
    folder = tmp_path / "two"
    folder.mkdir()
    (folder / "a.txt").write_text("".join(lines[:20]))
    (folder / "b.txt").write_text("".join(lines[20:]))
    (tmp_path / "only_test" / "test").mkdir(parents=True)
    (tmp_path / "only_test" / "test" / "c.txt").write_text("".join(lines[:10]))
    return tmp_path


# One file is one document, cut into passages of 2,000 characters or more (readers.passages): 20 verses are 2.
@pytest.mark.parametrize("where, documents", [("two", 2), ("two/a.txt", 2), ("only_test", 1)])
def test_a_text_that_is_not_the_runs_corpus_is_scored_whole(tiny_run, texts, capsys, where, documents):
    metrics = main([f"checkpoint={tiny_run / 'checkpoints' / 'best.pt'}", "data=text",
                    f"data.local_dir={texts / where}"])
    out = capsys.readouterr()
    assert json.loads(out.out)["test_loss"] == metrics["test_loss"] > 0 and metrics["test_bpb"] > 0
    [line] = [line for line in out.err.splitlines() if line.startswith("lmlab.evaluate: scored")]
    assert f"scored {documents} document{'s' * (documents > 1)}, " in line and " tokens: " in line
    assert ("its test/ folder" if where == "only_test" else "all of it") in line


def test_a_run_on_another_corpus_samples_and_suggests_prompts_from_its_own_text(tmp_path):
    """WikiText's sample prompts (" = Valkyria Chronicles = ") are the default; a run on another
    corpus opens its samples, and its "next: sample it" line, with the openings of its own
    validation documents instead."""
    run_dir = tmp_path / "run"
    r = run_cli([*CORPUS, *TINY, "train.max_steps=2", "train.eval_every=2", "eval.max_batches=1",
                 "eval.sample_tokens=2", "logger=none", f"hydra.run.dir={run_dir}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    prompts = {json.loads(line)["prompt"] for line in (run_dir / "samples.jsonl").read_text().splitlines()}
    assert len(prompts) == 3 and not any("Valkyria" in p or "1990" in p or "game" in p for p in prompts)
    verses = " ".join(line.strip() for line in corpus_lines(31_102))
    assert all(p.strip() and p.strip() in verses for p in prompts), prompts
    [suggested] = [line for line in r.stdout.splitlines() if "sample it:" in line]
    assert "Valkyria" not in suggested and any(p.strip() in suggested for p in prompts), suggested
