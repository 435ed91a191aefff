"""Every `python -m lmlab.X` a page of docs/ names has a console script beside it, and each prints
its own usage page on --help and exits 0."""
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
BIN = Path(sys.executable).parent


def test_every_entry_point_has_a_console_script():
    modules = {"lmlab", "lmlab.generate", "lmlab.evaluate", "lmlab.export", "lmlab.report", "lmlab.rescore",
               "lmlab.bench", "lmlab.lmeval"}
    assert {target.split(":")[0].removesuffix(".__main__") for target in SCRIPTS.values()} >= modules
    assert {"lmlab-evaluate", "lmlab-rescore", "lmlab-bench"} <= set(SCRIPTS)


@pytest.mark.parametrize("script, says", [("lmlab-evaluate", "checkpoint="), ("lmlab-rescore", "DIR"),
                                          ("lmlab-export", "out=")])
def test_a_console_script_prints_its_usage_on_help(script, says):
    if not (BIN / script).exists():
        pytest.skip(f"{script} is not installed in this environment: pip install -e . again")
    r = subprocess.run([str(BIN / script), "--help"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and says in r.stdout, r.stderr[-2000:]


@pytest.mark.parametrize("given, says", [
    ("text", "is not an lmlab checkpoint: not a file torch.save wrote (a checkpoint is a zip archive)"),
    ("run", "is a run dir, not a checkpoint: give one of its checkpoints, e.g. checkpoint={run}/checkpoints/best.pt"),
])
def test_a_checkpoint_that_is_not_one_is_named_for_what_it_is(tmp_path, given, says):
    from lmlab.checkpoint import CheckpointError, load_checkpoint

    (tmp_path / "text").write_text("In the beginning God created the heaven and the earth.\n")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / given)
    assert says.format(run=tmp_path / "run") in str(e.value)


@pytest.mark.parametrize("module, says", [("lmlab.generate", "key=value"), ("lmlab.export", "key=value"),
                                          ("lmlab.rescore", "DIR"), ("lmlab.evaluate", "checkpoint=PATH  (required)"),
                                          ("lmlab.lmeval", "key=value"), ("lmlab.data.floors_cost", "--tokens")])
def test_help_answers_without_loading_torch(module, says):
    """torch's import is most of a --help's seconds: an entry point imports it where it is used."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", module, "--help"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and says in r.stdout, r.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported


@pytest.mark.parametrize("module, header", [("lmlab", "lmlab: controlled experiments"),
                                            ("lmlab.bench", "lmlab.bench: the trainer's own step")])
def test_a_hydra_apps_help_lists_no_config_group_of_hydras(module, header):
    """Hydra lists every config group's options (~130 groups, twice: 2-5 s) before it prints a help
    page; lmlab's page shows its own list (lmlab.options), so its --help composes and prints alone."""
    code = ("import runpy, sys\n"
            "from hydra._internal.hydra import Hydra\n"
            "def listed(*args, **kwargs): raise AssertionError('every group listed')\n"
            "Hydra.format_config_groups = listed\n"
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n")
    r = subprocess.run([sys.executable, "-c", code, "model=optionA", "--help"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(header) and "\nmodel:\n" in r.stdout and "  optionA* " in r.stdout
    assert "--hydra-help : Hydra's help" in r.stdout and "Overrides : Any key=value arguments" in r.stdout


def test_the_report_help_answers_without_loading_matplotlib_or_scipy():
    """The plots and statistics take most of a --help's seconds: the report imports them once DIR is known."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "lmlab.report", "--help"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m lmlab.report") and "--stage2" in r.stdout
    imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"matplotlib", "scipy", "torch"}, sorted(imported & {"matplotlib", "scipy", "torch"})


@pytest.mark.parametrize("module", ["lmlab.generate", "lmlab", "lmlab.bench"])
def test_a_help_page_read_only_in_part_is_no_error(module, tmp_path):
    """`lmlab-generate --help | head -1`: the reader closes the pipe before the page is written
    (by key=value parsing for generate, by Hydra for the trainer and the bench)."""
    proc = subprocess.Popen([sys.executable, "-m", module, "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "BrokenPipeError" not in err and "Broken pipe" not in err, err


def test_the_bench_help_page_names_the_bench_keys(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lmlab.bench", "--help"], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("lmlab.bench: ") and "python -m lmlab.bench" in r.stdout
    for key in ("bench.steps=10", "bench.windows=5", "bench.compare=none", "bench.data=false", "bench.out=null"):
        assert f"  {key}\n" in r.stdout, r.stdout[:3000]
    assert "model:" in r.stdout  # the trainer's groups are the bench's too
