"""Padding masks (data.packing=false) and document masks (model.doc_mask=true), held to numbers."""
import json
import math

import numpy as np
import torch

from lmlab.data import Sampler, collate, document_rows, load_splits, packed_rows
from lmlab.model import GPT, GPTConfig, attention_mask
from lmlab.step import batch_loss
from tests.conftest import CORPUS, REPO, TINY, compose_config, run_cli

EOS = 0
CFG = GPTConfig(vocab_size=50, d_model=32, n_heads=2, n_layers=2, d_ff=64, max_seq_len=32)


def tiny_gpt(cfg=CFG) -> GPT:
    torch.manual_seed(0)
    return GPT(cfg).eval()


def documents_stream(lengths, seed=0) -> np.ndarray:
    """Documents of the given lengths (EOS excluded), each followed by EOS."""
    rng = np.random.default_rng(seed)
    return np.concatenate([np.append(rng.integers(1, CFG.vocab_size, n), EOS) for n in lengths])


def test_padded_batch_loss_is_the_token_weighted_loss_of_each_sequence_alone():
    model = tiny_gpt()
    tokens = documents_stream([3, 17, 8, 30, 1, 12])
    rows = document_rows(tokens, EOS, CFG.max_seq_len)
    batch = collate(tokens, rows, EOS)
    assert not batch["pad_mask"].all()  # the batch really is padded
    alone = [collate(tokens, rows[i:i + 1], EOS) for i in range(len(rows))]
    assert all(b["pad_mask"].all() for b in alone)  # ... and each row alone is not
    nll = sum(batch_loss(model, b, "cpu", reduction="sum").item() for b in alone)
    n_tokens = sum(int(b["pad_mask"].sum()) for b in alone)
    assert n_tokens == len(tokens) - 1  # every token but the first is a target once
    torch.testing.assert_close(batch_loss(model, batch, "cpu").item(), nll / n_tokens, rtol=1e-6, atol=0)


def capture_block0_attention(model: GPT, x, pad_mask):
    """Block 0's q, k, v (from its qkv projection) and its attention output (the input to proj)."""
    seen = {}
    attn = model.blocks[0].attn

    def keep(name, tensor):
        seen[name] = tensor  # returns None: a forward hook that returns a value replaces the output

    hooks = [attn.qkv.register_forward_hook(lambda m, i, o: keep("qkv", o)),
             attn.proj.register_forward_hook(lambda m, i, o: keep("y", i[0]))]
    logits = model(x, pad_mask=pad_mask)
    for h in hooks:
        h.remove()
    B, T, C = x.shape[0], x.shape[1], CFG.d_model
    q, k, v = seen["qkv"].view(B, T, 3, CFG.n_heads, C // CFG.n_heads).permute(2, 0, 3, 1, 4)
    return logits, q, k, v, seen["y"]


def test_attention_weight_on_padded_keys_is_exactly_zero_and_a_fully_padded_row_is_finite():
    model = tiny_gpt()
    T = 12
    x = torch.randint(1, CFG.vocab_size, (3, T), generator=torch.Generator().manual_seed(0))
    pad_mask = torch.ones(3, T, dtype=torch.bool)
    pad_mask[0, 7:] = False  # right padding, as collate makes it
    pad_mask[1, :5] = False  # left padding: here causality alone would not hide the padded keys
    pad_mask[2, :] = False  # nothing real at all
    logits, q, k, v, y = capture_block0_attention(model, x, pad_mask)

    mask = attention_mask(pad_mask, None, T, x.device)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.size(-1))
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    # These weights are the ones the model used: they reproduce its attention output.
    torch.testing.assert_close((weights @ v).transpose(1, 2).reshape(3, T, CFG.d_model), y, rtol=0, atol=1e-6)
    real_query_pad_key = pad_mask[:, None, :, None] & ~pad_mask[:, None, None, :]
    assert real_query_pad_key[:2].any()
    assert (weights.expand_as(scores)[real_query_pad_key.expand_as(scores)] == 0).all()
    # Real tokens of the left-padded row read nothing from the padding: changing it changes nothing.
    x2 = x.clone()
    x2[1, :5] = (x2[1, :5] + 1) % CFG.vocab_size
    assert torch.equal(model(x2, pad_mask=pad_mask)[1, 5:], logits[1, 5:])
    assert torch.isfinite(logits).all() and torch.isfinite(y).all()
    # The guard behind that: a query with no real key attends to itself alone (softmax over nothing
    # would be NaN, or zero on some kernels), so the fully padded row's output is its own values.
    assert mask[2, 0].equal(torch.eye(T, dtype=torch.bool))
    torch.testing.assert_close(y[2], v[2].transpose(0, 1).reshape(T, CFG.d_model), rtol=0, atol=1e-6)


def test_fully_padded_row_gives_no_nan_in_loss_or_gradients():
    model = tiny_gpt().train()
    tokens = documents_stream([20])
    batch = collate(tokens, packed_rows(len(tokens), CFG.max_seq_len), EOS)
    padded = {"x": torch.cat([batch["x"], torch.full_like(batch["x"], EOS)]),
              "y": torch.cat([batch["y"], torch.full_like(batch["y"], -100)]),
              "pad_mask": torch.cat([batch["pad_mask"], torch.zeros_like(batch["pad_mask"])])}
    loss = batch_loss(model, padded, "cpu")
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    torch.testing.assert_close(loss.item(), batch_loss(model, batch, "cpu").item(), rtol=1e-6, atol=0)


def test_doc_mask_logits_from_an_eos_on_do_not_depend_on_the_previous_document():
    model = tiny_gpt()
    before = np.array([5, 9, 13, 2, 44, 7])
    after = np.array([11, 3, 28, 19, 6])
    tokens = np.concatenate([before, [EOS], after, [EOS]])
    other = tokens.copy()
    other[:len(before)] = np.random.default_rng(1).integers(1, CFG.vocab_size, len(before))
    rows = packed_rows(len(tokens), CFG.max_seq_len)
    eos_at = len(before)

    def logits(toks, doc_mask):
        batch = collate(toks, rows, EOS, segments=doc_mask)
        return model(batch["x"], segments=batch.get("segments"))[0]

    a, b = logits(tokens, True), logits(other, True)
    torch.testing.assert_close(a[eos_at:], b[eos_at:], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:eos_at], b[:eos_at])
    # Without the document mask the second document does see the first.
    assert not torch.allclose(logits(tokens, False)[eos_at:], logits(other, False)[eos_at:])


def test_cli_trains_on_padded_document_rows_with_strided_eval(tmp_path):
    """data.packing=false (with a document mask and sliding-window evaluation) end to end."""
    run_dir = tmp_path / "run"
    r = run_cli([*CORPUS, *TINY, "data.packing=false", "model.doc_mask=true",
                 "eval.stride=24", "eval.sample_tokens=0", "train.max_steps=2", "train.eval_every=2",
                 "schedule.warmup_steps=2", f"hydra.run.dir={run_dir}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "done" and summary["eval_windows"] == "stride 24"
    assert 0 < summary["tokens_seen"] <= 2 * 8 * 32
    assert all(math.isfinite(summary[k]) for k in ("val_ppl", "test_ppl", "test_word_ppl", "test_bpb"))
    # A 512-token BPE needs more tokens than there are words, so per word the perplexity is higher.
    assert summary["test_word_ppl"] > summary["test_ppl"]
    assert not (run_dir / "samples.jsonl").exists()  # eval.sample_tokens=0 turns samples off


def test_tokens_seen_counts_real_targets_only(tmp_path):
    """Short articles, one per padded row: tokens_seen is exactly the targets of the rows drawn."""
    rng = np.random.default_rng(0)
    words = "alpha beta gamma delta river stone".split()
    for name in ("train", "valid", "test"):
        articles = [f" = {rng.choice(words)} = \n {' '.join(rng.choice(words, rng.integers(2, 12)))} . \n"
                    for _ in range(40)]
        (tmp_path / f"wiki.{name}.raw").write_text("".join(articles))
    overrides = [f"data.local_dir={tmp_path}", *TINY, "tokenizer.vocab_size=300", "data.packing=false"]
    run_dir = tmp_path / "run"
    r = run_cli([*overrides, "train.max_steps=2", "train.eval_every=2", "eval.sample_tokens=0", "logger=none",
                 f"hydra.run.dir={run_dir}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    _, splits = load_splits(*(lambda c: (c.data, c.tokenizer))(compose_config(overrides)))
    tokens = splits["train"].tokens
    sampler = Sampler(document_rows(tokens, int(tokens[-1]), 32), 8, seed=0)
    drawn = np.concatenate([sampler.next_rows(), sampler.next_rows()])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["tokens_seen"] == int((drawn[:, 1] - drawn[:, 2]).sum()) < 2 * 8 * 32 * 0.75
