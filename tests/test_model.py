"""The GPT: causal, blind to padding, and exactly as large as the formula says."""
import pytest
import torch

from lmlab.model import GPT, GPTConfig

CFG = GPTConfig(vocab_size=101, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_seq_len=16)


def model(cfg=CFG):
    torch.manual_seed(0)
    return GPT(cfg).eval()


def test_changing_a_later_token_changes_no_earlier_logit():
    m = model()
    x = torch.randint(0, CFG.vocab_size, (2, 16))
    for t in (0, 7, 14):
        y = x.clone()
        y[:, t + 1] = (y[:, t + 1] + 1) % CFG.vocab_size
        a, b = m(x), m(y)
        assert torch.equal(a[:, :t + 1], b[:, :t + 1])
        assert not torch.allclose(a[:, t + 1], b[:, t + 1])


def test_padded_positions_do_not_change_real_logits():
    m = model()
    real = torch.randint(0, CFG.vocab_size, (1, 9))
    padded = torch.cat([real, torch.zeros(1, 7, dtype=torch.long)], dim=1)
    pad_mask = torch.arange(16)[None] < 9
    torch.testing.assert_close(m(padded, pad_mask=pad_mask)[:, :9], m(real), rtol=0, atol=1e-6)


@pytest.mark.parametrize("d,layers,ff,V,T", [(32, 2, 64, 101, 16), (256, 4, 512, 8192, 256), (512, 6, 2048, 8192, 512)])
def test_parameter_count_matches_formula(d, layers, ff, V, T):
    m = GPT(GPTConfig(vocab_size=V, d_model=d, n_heads=4, n_layers=layers, d_ff=ff, max_seq_len=T))
    per_layer = 4 * d * d + 2 * d * ff + 9 * d + ff  # qkv+proj (4d^2+4d), mlp (2d*ff+ff+d), 2 LayerNorms (4d)
    non_embedding = layers * per_layer + 2 * d  # + final LayerNorm
    assert m.n_params(non_embedding=True) == non_embedding
    assert m.n_params() == non_embedding + V * d + T * d  # lm_head is tied to the token embedding


def test_kv_cache_matches_full_forward():
    m = model()
    x = torch.randint(0, CFG.vocab_size, (1, 12))
    cache = m.new_cache()
    prefix = m(x[:, :8], cache=cache)
    steps = [m(x[:, i:i + 1], cache=cache) for i in range(8, 12)]
    torch.testing.assert_close(torch.cat([prefix, *steps], dim=1), m(x), rtol=0, atol=1e-5)


def test_too_long_a_sequence_is_refused():
    with pytest.raises(ValueError, match="max_seq_len=16"):
        model()(torch.zeros(1, 17, dtype=torch.long))
