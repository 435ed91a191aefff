"""MFU: FLOPs per token by the formula, over the peak of the device in use, or unknown."""
import pytest

from lmlab.flops import PEAK_TFLOPS, flops_per_token, mfu, model_flops_per_token, peak_flops
from lmlab.model import GPT, GPTConfig


def test_flops_per_token_counts_parameters_head_and_attention():
    cfg = GPTConfig(vocab_size=8192, d_model=256, n_heads=4, n_layers=4, d_ff=512, max_seq_len=256)
    n = GPT(cfg).n_params(non_embedding=True)
    assert n == 4 * (4 * 256**2 + 2 * 256 * 512 + 9 * 256 + 512) + 2 * 256
    # 6 per non-embedding parameter, 6 d V for the head, 12 L d T for attention.
    assert flops_per_token(n, 256, 8192, 4, 256) == 6 * n + 6 * 256 * 8192 + 12 * 4 * 256 * 256
    # GPT-2 small (optionC) at GPT-2's vocabulary: 510.3M for its 85.06M non-embedding parameters,
    # 231.6M for the head, 113.2M for attention.
    c = GPTConfig(vocab_size=50257, d_model=768, n_heads=12, n_layers=12, d_ff=3072, max_seq_len=1024)
    model = GPT(c)
    assert model.n_params(non_embedding=True) == 85_056_000
    assert flops_per_token(85_056_000, 768, 50257, 12, 1024) == 855_166_464
    # A built model counts its real vocabulary, not the 50,304 rows it pads it to.
    assert model.cfg.padded_vocab_size == 50304 and model_flops_per_token(model) == 855_166_464


# Every figure of the peak table from two sources it was not copied from. NVIDIA's datasheets give
# tensor-core peaks with 2:4 sparsity (half of it dense), rounded to whole TFLOP/s: H100 (SXM
# BF16 1,979, TF32 989; PCIe 1,513, 756), H200 SXM (1,979, 989), GH200 (its GPU is the H100 SXM's:
# 1,979, 989), L4 (242, 120); the A100 and A10 sheets give the dense figure beside it (A100 312 |
# 624, 156 | 312; A10 125 | 250, 62.5 | 125). The architecture whitepapers give SMs x boost clock
# x dense FLOPs per SM per clock (BF16; TF32 is half): H100 SXM5 132 SMs at 1,830 MHz and H100
# PCIe 114 at 1,620, 4,096 (Hopper); A100 108 at 1,410, 2,048; A10 (GA102) 72 at 1,695 and L4
# (AD104) 58 at 2,040, 1,024.
SOURCES = {  # pattern: (sparse BF16, sparse TF32 in TFLOP/s, SMs, boost MHz, dense BF16 FLOPs/SM/clock)
    "H100 PCIe": (1513, 756, 114, 1620, 4096),
    "GH200": (1979, 989, 132, 1830, 4096),
    "H200": (1979, 989, 132, 1830, 4096),
    "H100": (1979, 989, 132, 1830, 4096),
    "A100": (624, 312, 108, 1410, 2048),
    "A10": (250, 125, 72, 1695, 1024),
    "L4": (242, 120, 58, 2040, 1024),
}


def test_every_peak_in_the_table_agrees_with_the_datasheet_and_the_chip_it_names():
    table = {(pattern, precision): tflops for pattern, peaks in PEAK_TFLOPS for precision, tflops in peaks.items()}
    assert {pattern for pattern, _ in table} == set(SOURCES)  # a new entry comes with its sources
    for (pattern, precision), tflops in table.items():
        sparse_bf16, sparse_tf32, sms, mhz, per_sm = SOURCES[pattern]
        datasheet = (sparse_bf16 if precision == "bf16" else sparse_tf32) / 2
        chip = sms * mhz * 1e6 * per_sm / (1 if precision == "bf16" else 2) / 1e12
        assert abs(tflops - datasheet) <= 0.5, (pattern, precision, tflops, datasheet)  # the sheet's rounding
        assert tflops == pytest.approx(chip, rel=0.015), (pattern, precision, tflops, chip)


@pytest.mark.parametrize("name,precision,tflops", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.5), ("NVIDIA H100 PCIe", "bf16", 756.5), ("NVIDIA H200", "bf16", 989.5),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312.0), ("NVIDIA A100-SXM4-80GB", "tf32", 156.0), ("NVIDIA L4", "bf16", 121.0),
])
def test_peaks_come_from_the_table_for_the_device_in_use(name, precision, tflops):
    assert peak_flops(name, precision) == tflops * 1e12


@pytest.mark.parametrize("name,precision", [("NVIDIA A10G", "bf16"), ("NVIDIA L40S", "bf16"), ("NVIDIA H100 NVL", "bf16"),
                                            ("cpu", "fp32"), ("NVIDIA H100 80GB HBM3", "fp32")])
def test_unknown_devices_and_precisions_have_no_peak_rather_than_a_guessed_one(name, precision):
    assert peak_flops(name, precision) is None
    assert mfu(1e9, 1e5, peak_flops(name, precision)) is None


def test_the_override_wins_everywhere():
    assert peak_flops("cpu", "fp32", override_tflops=2.0) == 2e12
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16", override_tflops=500.0) == 500e12
    assert mfu(1e9, 1e3, 2e13) == pytest.approx(0.05)  # 1 GFLOP x 1k tokens/s over 20 TFLOP/s
