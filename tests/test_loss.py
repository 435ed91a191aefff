"""The chunked loss (train.loss=chunked) is the dense loss to fp32 rounding: the same loss and the
same gradient for every parameter, padded vocabulary and unscored targets included."""
from importlib.util import find_spec

import pytest
import torch

from lmlab.config import LOSS_PACKAGES
from lmlab.errors import ConfigError
from lmlab.loss import chunked_cross_entropy
from lmlab.model import GPT, GPTConfig
from lmlab.step import TrainStep, forward_loss, make_optimizer, resolve_loss
from lmlab.validation import validate
from tests.conftest import compose_config
from tests.test_step import runtime_of, tcfg

CFG = GPTConfig(vocab_size=101, d_model=32, n_heads=2, n_layers=2, d_ff=64, max_seq_len=16)  # padded to 128
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                  reason="needs a CUDA device"))]


def batch(device, seed=0):
    """3 x 16 = 48 targets, 9 of them unscored (IGNORE)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, CFG.vocab_size, (3, 16), generator=g)
    y = torch.randint(0, CFG.vocab_size, (3, 16), generator=g)
    y[0, :5] = y[2, 10:14] = -100
    return x.to(device), y.to(device)


def model_on(device) -> GPT:
    torch.manual_seed(0)
    model = GPT(CFG).to(device)
    with torch.no_grad():  # padded rows stay zero in training; nonzero ones show any leak into the loss
        model.wte.weight[CFG.vocab_size:] = 1.0
    return model


def loss_and_grads(model, loss_fn) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def chunked(model, x, y, reduction, chunk):
    hidden = model(x, return_hidden=True).flatten(0, 1)
    return chunked_cross_entropy(hidden, model.lm_head.weight, y.flatten(), CFG.vocab_size, reduction=reduction,
                                 chunk=chunk)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("chunk", [7, 16, 48, 1000])  # 7 divides no row and not the 48 tokens
def test_chunked_loss_and_every_gradient_equal_the_dense_ones(device, reduction, chunk):
    model = model_on(device)
    x, y = batch(device)
    dense, dense_grads = loss_and_grads(model, lambda: forward_loss(model, x, y, reduction=reduction, loss="dense"))
    ours, grads = loss_and_grads(model, lambda: chunked(model, x, y, reduction, chunk))
    torch.testing.assert_close(ours, dense, rtol=1e-6, atol=1e-6)
    assert set(grads) == set(dense_grads) and len(grads) == 4 + 12 * CFG.n_layers
    for name, want in dense_grads.items():  # fp32 rounding of sums in another order, at the gradient's scale
        torch.testing.assert_close(grads[name], want, rtol=1e-5, atol=1e-6 * want.abs().max().item(), msg=name)
    assert grads["wte.weight"][CFG.vocab_size:].abs().sum() == 0  # padded rows: no gradient
    assert grads["wte.weight"][:CFG.vocab_size].abs().sum() > 0


def test_per_token_losses_equal_the_dense_ones_and_have_no_gradient():
    model = model_on("cpu")
    x, y = batch("cpu")
    with torch.no_grad():
        dense = forward_loss(model, x, y, reduction="none", loss="dense")
        ours = forward_loss(model, x, y, reduction="none", loss="chunked")
    assert ours.shape == (48,) and (ours[:5] == 0).all()
    torch.testing.assert_close(ours, dense, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="differentiates only its sum or mean"):
        forward_loss(model, x, y, reduction="none", loss="chunked")


def test_chunked_loss_under_bf16_autocast_is_the_dense_one_to_bf16_rounding():
    model = model_on("cpu")
    x, y = batch("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dense, dense_grads = loss_and_grads(model, lambda: forward_loss(model, x, y, loss="dense"))
        ours, grads = loss_and_grads(model, lambda: forward_loss(model, x, y, loss="chunked"))
    torch.testing.assert_close(ours, dense, rtol=1e-3, atol=1e-3)
    for name, want in dense_grads.items():  # a few bf16 steps (2**-8) of the gradient's scale
        assert grads[name].dtype == torch.float32, name
        torch.testing.assert_close(grads[name], want, rtol=2e-2, atol=2e-2 * want.abs().max().item(), msg=name)


# Inductor's CPU code generation took 4 minutes on 2 shared cores for this one loss: on the CPU the
# test compiles through Dynamo and AOTAutograd (the graph capture Inductor would get) and runs it eagerly.
@pytest.mark.parametrize("device, backend", [("cpu", "aot_eager"), pytest.param(
    "cuda", "inductor", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_compiled_chunked_loss_equals_the_eager_dense_one(device, backend):
    model = model_on(device)
    x, y = batch(device)
    dense, dense_grads = loss_and_grads(model, lambda: forward_loss(model, x, y, reduction="sum", loss="dense"))
    compiled = torch.compile(forward_loss, backend=backend, fullgraph=True)
    ours, grads = loss_and_grads(model, lambda: compiled(model, x, y, reduction="sum", loss="chunked"))
    torch.testing.assert_close(ours, dense, rtol=1e-6, atol=1e-5)
    for name, want in dense_grads.items():
        torch.testing.assert_close(grads[name], want, rtol=1e-5, atol=1e-6 * want.abs().max().item(), msg=name)


def test_train_step_takes_the_loss_train_loss_names():
    losses = {}
    for setting in ("dense", "chunked"):
        model = model_on("cpu")
        step = TrainStep(model, make_optimizer(model, tcfg(), fused=False), runtime_of(tcfg()), tcfg(loss=setting))
        assert step.loss == setting
        x, y = batch("cpu")
        losses[setting] = [step([({"x": x, "y": y}, int((y != -100).sum()))], 1e-2).item() for _ in range(3)]
    assert losses["chunked"] == pytest.approx(losses["dense"], rel=1e-5)
    assert losses["dense"][2] < losses["dense"][0]  # it trains
    assert resolve_loss("auto", torch.device("cpu")) == resolve_loss("auto", torch.device("cuda")) == "dense"


@pytest.mark.parametrize("setting, message", [("chunky", "must be one of"),
                                              ("liger", "needs the liger_kernel package"),
                                              ("cce", "needs the cut_cross_entropy package")])
def test_a_loss_that_is_unknown_or_not_installed_is_refused_before_any_compute(setting, message):
    if setting in LOSS_PACKAGES and find_spec(LOSS_PACKAGES[setting]):
        pytest.skip(f"{setting} is installed here")
    cfg = compose_config([f"train.loss={setting}"])
    with pytest.raises(ConfigError, match=message):
        validate(cfg)
