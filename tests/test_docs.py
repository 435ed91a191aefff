"""The commands of README.md and docs/*.md run as written; the docs cover every config option.

Every command in a ```bash block is checked in the cheapest faithful way, named in its test id:
- run: in a subprocess, in a scratch folder beside a link to ../shared (so the docs' relative
  paths and outputs/ resolve there), lmlab's training and bench commands with a tiny override set
  appended (TINY, 2 steps, one evaluation batch; the embedded corpus, data=kjv, where the command
  names no data); `<...>` in a path is the newest match of what an earlier command on the page made;
- compose: its config composed and validated in-process, each swept key at its first value and
  each value of a swept config group (every arm of a study) once (sweeps of many jobs, corpora
  only the hub has, bench modes that time several processes);
- skip: the reason it cannot run here (SLURM, CUDA, root, installs, a live server).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import is_dataclass
from pathlib import Path
from typing import get_type_hints

import pytest
from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser

import lmlab.conf  # noqa: F401  registers the trainer's schema when first imported: before `composes` swaps in the bench's
from lmlab.config import BenchRunConfig
from lmlab.resolvers import register_configs
from lmlab.validation import validate
from tests.conftest import CORPUS, MINI, REPO, SHARED_DATA, TEST_ENV, TINY

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_BLOCKS = {"bash", "sh", "shell"}

SKIP = [  # (a pattern in the command, why it does not run here)
    (r"^(pip|python -m venv)\b", "installs packages"),
    (r"^sudo\b", "needs root: the one-node SLURM cluster (tests/test_slurm.py)"),
    (r"^(sinfo|squeue|sbatch|scontrol)\b|hydra/launcher=slurm", "needs a SLURM cluster (tests/test_slurm.py)"),
    (r"\.gpu/check\.sh", "needs CUDA"),
    (r"^pytest\b", "the test suite itself"),
    (r"^optuna-dashboard\b", "a web server"),
    (r"--wandb\b", "needs a W&B server (tests/test_wandb_views.py checks the view offline)"),
    (r"lmlab\.lmeval|^lm_eval\b", "lm-evaluation-harness, a heavy extra: tests/test_lmeval.py runs it"),
    (r"^python -c\b|lmlab\.data\.floors_cost", "a measurement of the floors' cost"),
    (r"^(ba)?sh outputs/", "a study's stage 2: hours of training"),
    (r"^hf download\b|data\.local_dir=wikitext( |$)", "fetches WikiText from the hub, or reads the folder fetched"),
]
COMPOSE = [  # (a pattern in an lmlab training or bench command, why it is composed, not run)
    (r" \.\.\.( |$)", "a template: `...` stands for a run's own overrides"),
    (r"^torchrun\b|\btorchrun ", "several processes (tests/test_distributed.py runs torchrun)"),
    (r"data=(hub|wikitext103)|scale=wikitext103|tokenizer=gpt2", "needs network: the Hugging Face hub or tiktoken's GPT-2 files"),
    (r"data=text", "builds a token cache of a 5 MB corpus (tests/test_corpora.py runs data=text)"),
    (r"bench\.(compare|data)=", "times several processes or a cold cache build"),
    (r"lmlab(\.bench)?( \S+)* -m ", "a sweep of many jobs (README's first sweep is run)"),
]
TINY_RUN = [*TINY, "train.max_steps=2", "train.eval_every=2", "eval.max_batches=1", "eval.sample_tokens=2", "logger=none"]
TINY_BENCH = [*TINY, "bench.warmup_steps=1", "bench.steps=1", "bench.windows=1", "bench.pairs=1"]
BIN_PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # the venv's commands first


def shell_commands(path: Path) -> list[tuple[int, list[str]]]:
    """(first line, words) of every command in the file's bash blocks: continuation lines and
    quotes spanning lines joined, comments dropped."""
    commands, language, text, start = [], None, "", 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip().startswith("```"):
            language = line.strip()[3:].strip() if language is None else None
            continue
        if language not in SHELL_BLOCKS:
            continue
        start = start if text else number
        text += line[:-1] + " " if line.endswith("\\") else line + "\n"
        if line.endswith("\\"):
            continue
        try:
            words = shlex.split(text, comments=True)
        except ValueError:  # a quote still open: the command goes on
            continue
        if words:
            commands.append((start, words[:-1] if words[-1] == "&" else words))  # `&`: the same command, in the background
        text = ""
    return commands


def lmlab_module(words: list[str]) -> tuple[str, list[str]] | None:
    """(module, arguments) of an lmlab command: `python -m lmlab[.x] ...`, `lmlab ...` or torchrun's."""
    if words[:2] == ["python", "-m"] and words[2].startswith("lmlab"):
        return words[2], words[3:]
    if words[0] == "lmlab":
        return "lmlab", words[1:]
    if "torchrun" in words:
        at = words.index("-m", words.index("torchrun"))
        return words[at + 1], words[at + 2:]
    return None


def classify(path: Path, words: list[str]) -> tuple[str, str]:
    """(kind, reason): run, compose or skip, by the first rule that matches; unknown: no rule does."""
    line = " ".join(words)
    for pattern, reason in SKIP:
        if re.search(pattern, line):
            return "skip", reason
    program = lmlab_module(words)
    if program is None:
        return ("run", "") if words[:2] == ["optuna", "create-study"] else ("unknown", line)
    if program[0] in ("lmlab", "lmlab.bench"):
        for pattern, reason in COMPOSE:
            if re.search(pattern, line) and not (reason.startswith("a sweep") and path.name == "README.md"):
                return "compose", reason
    return "run", ""


def shrunk(words: list[str]) -> list[str]:
    """The command as run here: lmlab's training and bench commands with the tiny set appended."""
    program = lmlab_module(words)
    module = program[0] if program and "--cfg" not in words else None
    if module == "lmlab":
        local = [] if re.search(r"data\.local_dir=|data=|preset=", " ".join(words)) else CORPUS
        # the command's own evaluation windows must fit the tiny context
        windows = [int(w.split("=")[1]) for w in words if re.match(r"eval\.(common_window|stride)=\d+$", w)]
        return [*words, *local, *TINY_RUN, *[f"model.max_seq_len={max(windows)}" for _ in windows[:1]]]
    return [*words, *{"lmlab.bench": TINY_BENCH, "lmlab.evaluate": ["eval.max_batches=1"]}.get(module, [])]


def cases() -> list:
    """One test per command; a command already met on an earlier page is checked there."""
    params, first = [], {}
    for path in DOCS:
        for line, words in shell_commands(path):
            where = f"{path.relative_to(REPO)}:{line}"
            kind, reason = classify(path, words)
            key = tuple(shrunk(words) if kind == "run" else words)
            kind, reason = ("skip", f"checked as {first[key]}") if key in first else (kind, reason)
            first.setdefault(key, where)
            params.append(pytest.param(path, words, kind, reason, id=f"{where}:{kind}:{' '.join(words)[:70]}"))
    return params


CASES = cases()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A scratch repo root whose ../shared is the real one: the docs' paths resolve, outputs/ lands here."""
    root = tmp_path_factory.mktemp("docs")
    if SHARED_DATA.parent.is_dir():
        (root / "shared").symlink_to(SHARED_DATA.parent)
    (root / "repo").mkdir()
    return root / "repo"


def resolve(word: str, workdir: Path) -> str:
    """`<...>` parts of a path -> the newest match under workdir, as an earlier command made it."""
    word = word.replace("$PWD", str(workdir))
    if "<" not in word:
        return word
    key, _, value = word.rpartition("=") if "=" in word else ("", "", word)
    matches = sorted(workdir.glob(re.sub(r"<[^>]*>", "*", value)), key=lambda p: p.stat().st_mtime)
    if not matches:
        pytest.skip(f"nothing matches {value}: an earlier, longer command makes it")
    return f"{key}={matches[-1]}" if key else str(matches[-1])


def first_values(lines: list[str]) -> list[str]:
    """Overrides with each swept key at its first value (an interval at its start)."""
    out = []
    for o in OverridesParser.create().parse_overrides(lines):
        if not o.is_sweep_override():
            out.append(o.input_line)
            continue
        sweep = o.value()
        first = sweep.start if hasattr(sweep, "start") and not hasattr(sweep, "step") else next(o.sweep_string_iterator())
        out.append(f"{o.get_key_element()}={first}")
    return out


def each_group_choice(lines: list[str]) -> list[list[str]]:
    """The overrides with each swept key at its first value, and again with each other value of every
    swept config group (a key without a dot: `+variant`, `model`): every config file a sweep picks,
    each arm of a study, composes once; the other keys stay at their first value."""
    firsts = first_values(lines)
    choices = [firsts]
    for at, o in enumerate(OverridesParser.create().parse_overrides(lines)):
        if o.is_sweep_override() and "." not in o.key_or_group and not hasattr(o.value(), "start"):
            choices += [[*firsts[:at], f"{o.get_key_element()}={value}", *firsts[at + 1:]]
                        for value in list(o.sweep_string_iterator())[1:]]
    return choices


def composes(module: str, args: list[str]) -> None:
    """Each arm of the command composes and validates: every value of a config group swept on the
    command line or by the sweep's `hydra.sweeper.params`, the other swept keys at their first value."""
    args = [re.sub(r"<[^>]*>", "x", a) for i, a in enumerate(args)
            if a not in ("-m", "...") and not a.startswith("--") and args[i - 1] != "--cfg"]
    bench = module == "lmlab.bench"
    register_configs(bench=bench)
    try:
        with initialize_config_module(config_module="lmlab.conf", version_base="1.3"):
            name = "bench" if bench else "config"
            params = compose(config_name=name, overrides=first_values(args),
                             return_hydra_config=True).hydra.sweeper.get("params")
            given = {line.split("=")[0].lstrip("+~") for line in args}
            swept = [f"{key}={value}" for key, value in (params or {}).items() if key.lstrip("+~") not in given]
            for overrides in each_group_choice([*swept, *args]):
                validate(compose(config_name=name, overrides=overrides))
    finally:
        register_configs()


@pytest.mark.parametrize("path,words,kind,reason", CASES)
def test_doc_command(path, words, kind, reason, workdir, cache_dir):
    if kind == "skip":
        pytest.skip(reason)
    assert kind != "unknown", f"{path.name}: no rule says how to check `{reason}`: add one to SKIP or COMPOSE"
    program = lmlab_module(words)
    if "preset=quick" in words and not (REPO / "conf" / "preset" / "quick.yaml").is_file():
        pytest.skip("conf/preset/quick.yaml is not in this checkout")
    if kind == "compose":
        return composes(*program)
    words = [resolve(w, workdir) for w in shrunk(words)]
    if "../shared" in " ".join(words) and not MINI.is_dir():  # WikiText's files there
        pytest.skip(f"real WikiText not found at {MINI}")
    made = [w.partition("=")[2] for w in words if w.startswith("checkpoint=")] or \
        [w for w in words[3:4] if program and program[0] in ("lmlab.report", "lmlab.rescore")]
    if made and not (workdir / made[0]).exists():
        pytest.skip(f"no {made[0]}: a longer command on the page makes it")
    if words[0] == "lmlab":
        words = ["python", "-m", *words]
    program_path = sys.executable if words[0] == "python" else shutil.which(words[0], path=BIN_PATH)
    if program_path is None:
        pytest.skip(f"no {words[0]} on PATH")
    command = [program_path, *words[1:]]
    r = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=900,
                       env={**os.environ, **TEST_ENV, "LMLAB_CACHE_DIR": str(cache_dir)})
    assert r.returncode == 0, f"{' '.join(command)}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"


def test_the_commands_a_user_runs_need_no_shared_folder():
    """A user has no ../shared: no command of README or docs/ names it, nor does any line of README,
    docs/ (the findings too) or a config's comment."""
    found = [f"{path.name}:{line}" for path in DOCS
             for line, words in shell_commands(path) if any("../shared" in word for word in words)]
    pages = [REPO / "README.md", *sorted(REPO.glob("docs/**/*.md")), *sorted(REPO.glob("conf/**/*.yaml")),
             *sorted(REPO.glob("sweeps/**/*.yaml"))]  # the configs' comments hold the commands that run them
    found += [f"{path.relative_to(REPO)}:{number}" for path in pages
              for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if "../shared" in line]
    assert not found


def test_readme_is_short():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) < 160


HISTORY = r"this (issue|session|sitting|review)|the last sitting|later proved|first edition"


def test_docs_speak_of_the_product_not_of_how_it_was_made():
    found = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
             for path in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(HISTORY, line, re.IGNORECASE)]
    assert not found, "\n".join(found)


def dataclass_keys(node, prefix: str = "") -> list[str]:
    """`group.key` of every field of a config dataclass, nested nodes followed."""
    return [key for name, kind in get_type_hints(node).items()
            for key in (dataclass_keys(kind, f"{prefix}{name}.") if is_dataclass(kind) else [f"{prefix}{name}"])]


def test_config_reference_names_every_key_and_every_group_option():
    reference = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    missing = [k for k in dataclass_keys(BenchRunConfig) if f"`{k}`" not in reference]
    assert not missing, f"docs/config.md does not name: {missing}"
    groups = {group: sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))
              for group in ("model", "data", "schedule", "tokenizer", "logger", "preset", "scale", "sweep", "variant")}
    groups["hydra/launcher"] = sorted(p.stem for p in (REPO / "conf" / "hydra" / "launcher").glob("*.yaml"))
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z/]+)` \|.*$", reference, re.MULTILINE)}
    unnamed = [f"{group}={option}" for group, options in groups.items() for option in options
               if f"`{option}`" not in rows.get(group, "")]
    assert not unnamed, f"docs/config.md's group table does not list: {unnamed}"


def test_what_the_readmes_commands_write_is_ignored_by_git():
    """outputs/ (runs, sweeps) and hf/ (the README's export) are not offered to `git add`."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("outputs/runs/x/summary.json", "hf/my-model/config.json"):
        r = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO)
        assert r.returncode == 0, f"{path} is not ignored (.gitignore)"


STUDIES = sorted(path.parent.parent for path in (REPO / "docs" / "findings").glob("*/jobs/multirun.yaml"))


@pytest.mark.parametrize("study", STUDIES, ids=lambda path: path.name)
def test_a_studys_report_is_rebuilt_byte_for_byte_from_its_committed_job_records(study, tmp_path):
    """docs/findings/<study>/report.md is what `python -m lmlab.report docs/findings/<study>/jobs`
    writes from the records committed beside it, on any clone."""
    records = study.relative_to(REPO) / "jobs"
    r = subprocess.run([sys.executable, "-m", "lmlab.report", str(records), "--out", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "report.md").read_text() == (study / "report.md").read_text()
