"""The runtime: what a run computes on (device, precision, compile, attention, peak), decided once,
and the import graph it sits in."""
import ast
from pathlib import Path

import pytest
import torch

import lmlab.runtime
from lmlab.config import to_container
from lmlab.data import collate, load_splits, packed_rows
from lmlab.model import GPT
from lmlab.runtime import CPU_BF16_MIN_D_MODEL, Runtime, cpu_has_native_bf16, resolve_precision, resolve_runtime
from lmlab.step import forward_loss
from lmlab.tracking import Tracker
from tests.conftest import CORPUS, REPO, TINY, compose_config
from tests.test_step import CFG, gpt, stream, tcfg

CPU = torch.device("cpu")


@pytest.mark.parametrize("flags, native", [("fpu avx512f avx512_bf16 avx512_vnni", True),
                                           ("fpu avx512f amx_tile amx_bf16", True), ("fpu avx2 avx512f", False)])
def test_native_bf16_is_read_from_the_cpus_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: a CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert cpu_has_native_bf16(str(cpuinfo)) is native
    assert cpu_has_native_bf16(str(tmp_path / "absent")) is False  # not Linux: fp32


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_on_cuda_and_on_a_native_bf16_cpu_for_wide_models(monkeypatch, native):
    monkeypatch.setattr(lmlab.runtime, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision(CPU, "auto", CPU_BF16_MIN_D_MODEL) == ("bf16" if native else "fp32")
    assert resolve_precision(CPU, "auto", CPU_BF16_MIN_D_MODEL // 2) == "fp32"  # measured slower there
    assert resolve_precision(torch.device("cuda"), "auto", 32) == "bf16"
    assert resolve_precision(CPU, "fp32", 256) == "fp32" and resolve_precision(CPU, "bf16", 32) == "bf16"
    assert resolve_runtime(tcfg(), 256).precision == ("bf16" if native else "fp32")


def test_bf16_runs_the_matmuls_in_bf16_and_the_loss_in_fp32():
    model = gpt()
    batch = collate(stream(), packed_rows(2000, CFG.max_seq_len)[:4], 0)
    seen = []
    model.lm_head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    losses = {}
    for precision in ("fp32", "bf16"):
        with Runtime(CPU, precision).context():
            losses[precision] = forward_loss(model, batch["x"], batch["y"])
    assert seen == [torch.float32, torch.bfloat16]
    assert losses["bf16"].dtype == torch.float32
    assert losses["bf16"].item() == pytest.approx(losses["fp32"].item(), rel=1e-2)
    assert losses["bf16"].item() != losses["fp32"].item()


def test_the_trainer_resolves_its_runtime_once_and_trains_and_evaluates_on_it(monkeypatch, tmp_path):
    from lmlab.config import gpt_config
    from lmlab.train import train

    calls = []
    resolve = lmlab.runtime.resolve_device
    monkeypatch.setattr(lmlab.runtime, "resolve_device", lambda *a: calls.append(a) or resolve(*a))
    cfg = compose_config([*CORPUS, *TINY, "train.max_steps=2", "train.eval_every=1", "eval.max_batches=1",
                          "eval.sample_tokens=0", "logger=none"])
    tokenizer, splits = load_splits(cfg.data, cfg.tokenizer)
    model = GPT(gpt_config(cfg, tokenizer.vocab_size))
    summary = train(cfg, model, tokenizer, splits, Tracker(tmp_path, cfg.logger, {}, group="g", name="n"), tmp_path,
                    to_container(cfg))
    assert summary["status"] == "done" and summary["device"] == "cpu" and summary["precision"] == "fp32"  # tiny
    assert calls == [("auto", None)]  # three evaluations, two steps, the summary: one runtime


def lmlab_imports(path: Path, modules: set[str]) -> set[str]:
    """The lmlab modules a file imports anywhere in it (a function's imports too); `from lmlab.x
    import y` counts lmlab.x.y where that is a module, else lmlab.x."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lmlab"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules
            found |= subs if len(subs) == len(node.names) else subs | {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lmlab")}
    return found & modules


def test_no_module_of_lmlab_imports_one_that_imports_it_back():
    files = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (REPO / "lmlab").rglob("*.py")}
    graph = {name: lmlab_imports(path, set(files)) - {name} for name, path in files.items()}

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    circles = sorted(name for name in graph if name in reachable(name))
    assert circles == []
    assert graph["lmlab.errors"] == set()  # every module may import the errors it raises
