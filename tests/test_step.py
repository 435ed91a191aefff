"""The training step: what it optimises (decay groups, schedule, accumulated gradients), the padded
vocabulary it never lets through, and the data path that feeds it."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lmlab.checkpoint import checkpoint_payload, load_checkpoint, write_checkpoint
from lmlab.data import Sampler, Split, collate, document_rows, packed_rows, scored_targets
from lmlab.scoring import evaluate
from lmlab.model import GPT, GPTConfig
from lmlab.rng import capture_rng, restore_rng
from lmlab.runtime import Runtime, resolve_runtime
from lmlab.step import TrainStep, batch_loss, device_batches, make_optimizer, to_device
from lmlab.schedule import lr_at

CFG = GPTConfig(vocab_size=101, d_model=32, n_heads=2, n_layers=2, d_ff=64, max_seq_len=16)


def tcfg(**kw):
    base = {"weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95, "grad_clip": 1.0, "precision": "auto",
            "compile": "false", "compile_mode": None, "attention": "auto", "deterministic": False,
            "loss": "auto", "device": "cpu", "peak_tflops": None}
    return OmegaConf.create({**base, **kw})


def runtime_of(cfg, device: str = "cpu") -> Runtime:
    """The Runtime the trainer resolves from the train config `cfg` for CFG's model on `device`."""
    return resolve_runtime(OmegaConf.merge(cfg, {"device": device}), CFG.d_model)


def gpt(cfg=CFG, seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg)


def stream(n=2000, vocab=CFG.vocab_size, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, n)


def test_weight_decay_only_shrinks_matrices_inside_blocks():
    model = gpt()
    opt = make_optimizer(model, tcfg(weight_decay=0.5), fused=False)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: whatever moves, moves by decay alone
    for group in opt.param_groups:
        group["lr"] = 0.1
    opt.step()
    for name, p in model.named_parameters():
        decayed = p.dim() >= 2 and not name.startswith(("wte", "wpe"))
        expected = before[name] * (1 - 0.1 * 0.5) if decayed else before[name]
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7, msg=name)
    assert {n for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith(("wte", "wpe"))} == \
        {f"blocks.{i}.{m}.weight" for i in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")}


def test_cosine_schedule_follows_the_cosine_between_its_end_points():
    sched = OmegaConf.create({"peak_lr": 1.0, "warmup_steps": 10, "decay": "cosine", "min_lr_ratio": 0.1})
    for step in (10, 35, 60, 85, 110):
        progress = (step - 10) / 100
        expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
        assert lr_at(step, sched, 110) == pytest.approx(expected), step
    # A straight line between the same end points is 0.775 a quarter of the way; the cosine is higher.
    assert lr_at(35, sched, 110) == pytest.approx(0.868198, rel=1e-5)
    assert [lr_at(s, sched, 110) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])


def sgd_step_weights(micro_rows: list[np.ndarray], tokens) -> dict:
    """Weights after one TrainStep of plain SGD (lr 1, no clipping), whose update is the gradient
    itself: any error in scaling the micro-batches' losses shows in the weights."""
    model = gpt()
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=1.0), runtime_of(tcfg()), tcfg(grad_clip=1e9))
    step([(to_device(collate(tokens, rows, 0), "cpu"), scored_targets(rows)) for rows in micro_rows],
         lr=1.0)
    return {k: v.clone() for k, v in model.state_dict().items()}


def documents(lengths: list[int], eos: int = 0) -> np.ndarray:
    """A stream of EOS-ended documents of these lengths (random non-EOS tokens)."""
    rng = np.random.default_rng(0)
    return np.concatenate([np.append(rng.integers(1, CFG.vocab_size, n), eos) for n in lengths])


@pytest.mark.parametrize("packing", [True, False])
def test_accumulated_micro_batches_give_the_gradient_of_one_big_batch(packing):
    """Every scored target weighs the same, whichever micro-batch it falls in: with unpacked
    documents of unequal lengths the micro-batches score different numbers of targets, and a mean
    of the micro-batches' means would weigh a short document's tokens more."""
    if packing:
        tokens = stream()
        rows = packed_rows(len(tokens), CFG.max_seq_len)[:8]
    else:
        tokens = documents([3, 14, 15, 2, 9, 1, 12, 6, 15, 4])
        rows = document_rows(tokens, 0, CFG.max_seq_len)[:8]
        assert (scored_targets(rows[:4]), scored_targets(rows[4:])) == (37, 32)
    one = sgd_step_weights([rows], tokens)
    two = sgd_step_weights([rows[:4], rows[4:]], tokens)
    moved = gpt().state_dict()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6, msg=key)
    assert not torch.equal(one["blocks.0.mlp.fc.weight"], moved["blocks.0.mlp.fc.weight"])


def test_a_padded_vocabulary_changes_no_number_of_the_run():
    padded, plain = gpt(), gpt(GPTConfig(**{**CFG.__dict__, "vocab_multiple": 1}))
    assert padded.wte.weight.shape == (128, 32) and plain.wte.weight.shape == (101, 32)
    assert padded.n_params() == plain.n_params() and padded.n_params(True) == plain.n_params(True)
    tokens = stream()
    rows = packed_rows(len(tokens), CFG.max_seq_len)
    x = torch.from_numpy(tokens[:16])[None]
    assert padded(x).shape[-1] == 101  # padded entries are never a choice: no probability, no sample
    torch.testing.assert_close(torch.softmax(padded(x), -1).sum(-1), torch.ones(1, 16))
    # Same seed, same weights, same losses and perplexity, step after step.
    steps = {}
    for name, model in (("padded", padded), ("plain", plain)):
        step = TrainStep(model, make_optimizer(model, tcfg(), fused=False), runtime_of(tcfg()), tcfg())
        sampler = Sampler(rows, 4, seed=0)
        losses = [step(device_batches(tokens, sampler, 1, 0, False, torch.device("cpu"))[0], 1e-2).item()
                  for _ in range(3)]
        steps[name] = losses, evaluate(model, Split("v", tokens, 1, 10, 10), rows[:8], 0, 4, "cpu").ppl
    assert steps["padded"][0] == pytest.approx(steps["plain"][0], rel=1e-6)
    assert steps["padded"][1] == pytest.approx(steps["plain"][1], rel=1e-6)
    assert padded.wte.weight[101:].abs().sum() == 0  # the padded rows never learn anything
    torch.testing.assert_close(padded.wte.weight[:101], plain.wte.weight, rtol=1e-5, atol=1e-6)


def test_device_batches_are_the_collated_rows_and_count_only_real_targets():
    eos = 0
    lengths = [3, 17, 8, 30, 1, 12, 5]
    tokens = np.concatenate([np.append(np.random.default_rng(i).integers(1, 50, n), eos) for i, n in enumerate(lengths)])
    rows = document_rows(tokens, eos, 16)
    sampler, reference = Sampler(rows, 3, seed=1), Sampler(rows, 3, seed=1)
    for _ in range(4):  # past an epoch boundary
        batches, n_targets = device_batches(tokens, sampler, 2, eos, True, torch.device("cpu"))
        expected = [collate(tokens, reference.next_rows(), eos, segments=True) for _ in range(2)]
        assert n_targets == sum(int((b["y"] != -100).sum()) for b in expected)
        for (got, scored), want in zip(batches, expected):
            assert scored == int((want["y"] != -100).sum())  # the micro-batch's own denominator
            assert set(got) == set(want) - ({"pad_mask"} if want["pad_mask"].all() else set())
            for key in got:
                assert torch.equal(got[key], want[key]), key
    assert (sampler.epoch, sampler.cursor) == (reference.epoch, reference.cursor)


def test_a_padded_batch_keeps_its_mask_through_the_step_path():
    """What train and evaluation call (to_device, forward_loss) must hand the model a mask that
    hides something. With left padding, where causality alone would not hide the pad keys, the
    loss does not depend on what the padding holds; without the mask it would."""
    model = gpt().eval()
    row = collate(stream(13), packed_rows(13, 16), 0)
    assert "pad_mask" not in to_device(row, "cpu")  # nothing padded: the plain causal kernel

    def left_padded(pad_token: int, with_mask: bool = True) -> dict:
        batch = {"x": torch.cat([torch.full((1, 4), pad_token), row["x"]], 1),
                 "y": torch.cat([torch.full((1, 4), -100), row["y"]], 1),
                 "pad_mask": torch.cat([torch.zeros(1, 4, dtype=torch.bool), row["pad_mask"]], 1)}
        return batch if with_mask else {"x": batch["x"], "y": batch["y"], "pad_mask": torch.ones_like(batch["pad_mask"])}

    assert "pad_mask" in to_device(left_padded(7), "cpu")
    assert batch_loss(model, left_padded(7), "cpu").item() == batch_loss(model, left_padded(90), "cpu").item()
    assert batch_loss(model, left_padded(7, False), "cpu").item() != batch_loss(model, left_padded(90, False), "cpu").item()


def test_compiled_step_on_cpu_matches_the_eager_one():
    tokens = stream()
    rows = packed_rows(len(tokens), CFG.max_seq_len)
    losses = {}
    for setting in ("false", "true"):
        model = gpt()
        step = TrainStep(model, make_optimizer(model, tcfg(), fused=False), runtime_of(tcfg(compile=setting)),
                         tcfg(compile=setting))
        assert step.compiled == (setting == "true")
        sampler = Sampler(rows, 4, seed=0)
        losses[setting] = [step(device_batches(tokens, sampler, 2, 0, False, torch.device("cpu"))[0], 1e-2).item()
                           for _ in range(3)]
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-4)


@pytest.fixture
def restore_determinism():
    """train.deterministic switches a process-wide torch setting; a test that turns it on puts it back."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def train_steps(device: str, settings: dict, n: int, start: Path | None = None, save: Path | None = None) -> dict:
    """`n` steps of the trainer's own pieces (TrainStep, Sampler, fused AdamW on CUDA as the trainer
    picks it) from seed 0 or from the checkpoint file `start`, written and read as the trainer does;
    saves to `save` after them. Returns the weights."""
    device = torch.device(device)
    cfg = tcfg(deterministic=True, precision=settings["precision"])
    tokens = stream(4000)
    model = gpt(GPTConfig(**{**CFG.__dict__, "dropout": settings["dropout"]}), seed=1).to(device)
    opt = make_optimizer(model, cfg, fused=device.type == "cuda")
    sampler = Sampler(packed_rows(len(tokens), CFG.max_seq_len), 8, seed=0)
    if start is None:
        torch.manual_seed(0)
    else:
        ckpt = load_checkpoint(start)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sampler = Sampler(sampler.rows, 8, seed=0, **ckpt["train_state"]["sampler"])
        restore_rng(ckpt["train_state"]["rng"])
    step = TrainStep(model, opt, runtime_of(cfg, device.type), cfg)
    for _ in range(n):
        step(device_batches(tokens, sampler, 2, 0, False, device)[0], 3e-3)
    if save is not None:
        state = {"sampler": sampler.state_dict(), "rng": capture_rng()}
        write_checkpoint(save, checkpoint_payload(model, {}, state, {}, opt))
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_steps_resumed_from_a_checkpoint_file_are_bit_identical(tmp_path, restore_determinism, device, precision,
                                                                 dropout):
    """The exact-resume guarantee one piece at a time, in one process: two runs agree (deterministic
    kernels), and 3 steps, a checkpoint and 3 more steps from it give the weights of 6 straight.
    On the GPU the CLI's resume test (test_gpu.py) failed on an H200; with and without dropout
    (the CUDA RNG) and bf16, this says which piece loses the bits."""
    settings = {"precision": precision, "dropout": dropout}
    straight = train_steps(device, settings, 6)
    again = train_steps(device, settings, 6)
    assert [k for k in straight if not torch.equal(straight[k], again[k])] == [], "two identical runs differ"
    train_steps(device, settings, 3, save=tmp_path / "cut.pt")
    resumed = train_steps(device, settings, 3, start=tmp_path / "cut.pt")
    differ = {k: (straight[k] - resumed[k]).abs().max().item() for k in straight if not torch.equal(straight[k], resumed[k])}
    assert differ == {}, f"resumed weights differ (max abs difference per tensor): {differ}"
