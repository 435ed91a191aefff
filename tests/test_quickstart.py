"""A fresh machine with no download: the embedded corpus (data=kjv), preset=quick, the default's
offline message that names it, and lmlab's own --help page."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from lmlab.data.sources import split_texts
from tests.conftest import REPO, compose_config, run_cli

# The quick preset shrunk further: what it runs, in seconds.
SHRINK = ["model.d_model=32", "model.n_heads=2", "model.n_layers=1", "train.max_steps=2", "train.eval_every=2",
          "eval.sample_tokens=4"]


def test_the_embedded_corpus_is_read_from_the_installed_package():
    cfg = compose_config(["data=kjv"])
    assert Path(cfg.data.local_dir) == Path(importlib.util.find_spec("bible").submodule_search_locations[0]) / "data"
    splits = split_texts(cfg.data, "train")
    # 31,102 verses of the King James Bible, one document each, 4,106,349 bytes in all
    assert sum(len(s.documents) for s in splits.values()) == 31_103
    assert sum(s.n_bytes for s in splits.values()) == 4_106_349
    assert "In the beginning God created the heaven and the earth." in splits["train"].documents + \
        splits["validation"].documents + splits["test"].documents


def test_the_quick_preset_runs_on_the_embedded_corpus_and_the_default_stays_wikitext():
    quick, default = compose_config(["preset=quick"]), compose_config([])
    assert (quick.data.name, quick.data.kind, quick.model.name, quick.logger.kind) == ("kjv", "text", "tiny", "none")
    assert (default.data.name, default.data.local_dir) == ("wikitext2", None)


def test_the_quick_preset_trains_evaluates_checkpoints_samples_and_says_what_next(tmp_path):
    r = run_cli(["preset=quick", *SHRINK, f"hydra.run.dir={tmp_path}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "done"
    assert (tmp_path / "checkpoints" / "best.pt").is_file()
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert {s["prompt"] for s in samples} == set(compose_config(["preset=quick"]).eval.sample_prompts)
    assert f"python -m lmlab.generate checkpoint={tmp_path / 'checkpoints' / 'best.pt'}" in r.stdout
    assert f"files: {tmp_path} (" in r.stdout


def test_a_sweep_ends_with_the_command_that_reports_it(tmp_path):
    r = run_cli(["-m", "preset=quick", *SHRINK, "train.seed=0,1", "eval.sample_tokens=0",
                 f"hydra.sweep.dir={tmp_path}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(json.loads((d / "summary.json").read_text())["status"] for d in tmp_path.iterdir() if d.is_dir()
                  and (d / "summary.json").is_file()) == ["done", "done"]
    assert r.stdout.rstrip().splitlines()[-1].startswith(f"next:  python -m lmlab.report {tmp_path}")
    assert "python -m lmlab.generate" not in r.stdout  # a sweep's jobs print no per-run lines


def test_the_default_run_offline_names_the_quick_preset_in_one_line(tmp_path):
    r = run_cli([f"hydra.run.dir={tmp_path}"], cwd=tmp_path)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "python -m lmlab preset=quick" in r.stderr, r.stderr


def test_help_is_lmlabs_page_listing_every_option_once_with_a_line_each(tmp_path):
    r = run_cli(["--help"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    page = r.stdout
    assert "powered by Hydra" not in page and "base_" not in page and "sweep/scale" not in page
    groups = {d.name: d for d in (REPO / "conf").iterdir() if d.is_dir() and d.name != "hydra"}
    groups["hydra/launcher"] = REPO / "conf" / "hydra" / "launcher"
    for group, folder in groups.items():
        lines = page.split(f"\n{group}:\n", 1)[1].split("\n\n", 1)[0].splitlines()
        listed = {line.split()[0].rstrip("*"): line for line in lines}
        assert set(listed) == {f.stem for f in folder.glob("*.yaml")}, group
        assert all(len(line.split()) > 2 for line in listed.values()), lines  # a name and a description
    assert "  wikitext2*" in page  # the default is marked
