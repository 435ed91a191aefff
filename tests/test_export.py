"""Export to Hugging Face: transformers loads the directory offline and computes what lmlab computes,
on real text: the same tokens, the same logits (fp32, |difference| <= 1e-4), the same greedy
continuation, and the test-split perplexity of summary.json to 1e-4 relative."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from lmlab.checkpoint import load_model, save_checkpoint
from lmlab.data import IGNORE, collate, load_splits, packed_rows
from lmlab.data.sources import split_text
import lmlab.export
from lmlab.export import LOGITS_ATOL, ExportError, export, fast_tokenizer, gpt2_state_dict
from lmlab.generate import sample
from lmlab.model import GPT, GPTConfig
from tests.conftest import REPO, TEST_ENV

transformers = pytest.importorskip("transformers", reason="the hf extra (transformers, safetensors) is not installed")


def export_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmlab.export", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **TEST_ENV})


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "model"
    r = export_cli(f"checkpoint={tiny_run / 'checkpoints' / 'best.pt'}", f"out={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    model, tok, ckpt = load_model(tiny_run / "checkpoints" / "best.pt")
    return {"out": out, "hf_model": hf_model, "hf_tok": hf_tok, "model": model, "tok": tok, "ckpt": ckpt}


def test_the_directory_is_gpt2_with_the_runs_shapes(exported):
    c, m = exported["hf_model"].config, exported["model"].cfg
    assert c.model_type == "gpt2" and type(exported["hf_model"]).__name__ == "GPT2LMHeadModel"
    assert (c.n_embd, c.n_head, c.n_layer, c.n_inner, c.n_positions, c.vocab_size) == \
        (m.d_model, m.n_heads, m.n_layers, m.d_ff, m.max_seq_len, m.vocab_size) == (32, 2, 2, 64, 32, 512)
    assert (c.activation_function, c.layer_norm_epsilon, c.tie_word_embeddings) == ("gelu_pytorch_tanh", 1e-5, True)
    eos = exported["tok"].eos_id
    assert c.eos_token_id == c.bos_token_id == exported["hf_tok"].eos_token_id == eos
    assert exported["hf_tok"].eos_token == "<|endoftext|>"
    assert (exported["out"] / "model.safetensors").is_file()


def test_tokenization_is_identical_on_the_whole_test_split(exported):
    cfg = OmegaConf.create(exported["ckpt"]["config"])
    docs = split_text(cfg.data, "test").documents
    hf_ids = exported["hf_tok"](docs, add_special_tokens=False)["input_ids"]
    eos = exported["tok"].eos_id
    _, splits = load_splits(cfg.data, cfg.tokenizer)
    assert np.array_equal(np.concatenate([ids + [eos] for ids in hf_ids]), np.asarray(splits["test"].tokens))
    assert exported["hf_tok"].decode(hf_ids[0]) == docs[0]


def test_logits_match_on_real_text(exported):
    model = exported["model"]
    cfg = OmegaConf.create(exported["ckpt"]["config"])
    _, splits = load_splits(cfg.data, cfg.tokenizer)
    ids = torch.from_numpy(np.asarray(splits["validation"].tokens[:8 * 32], dtype=np.int64)).view(8, 32)
    with torch.no_grad():
        ours, theirs = model(ids), exported["hf_model"](ids).logits
    assert theirs.shape == ours.shape == (8, 32, 512)
    torch.testing.assert_close(theirs, ours, atol=LOGITS_ATOL, rtol=0)


def test_greedy_generation_gives_the_same_tokens(exported):
    model, tok = exported["model"], exported["tok"]
    prompt = " The game was released in"
    ours = sample(model, tok, prompt, max_new_tokens=20, temperature=0)
    ids = torch.tensor([[tok.eos_id] + tok.encode(prompt)])
    theirs = exported["hf_model"].generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20,
                                           do_sample=False, pad_token_id=tok.eos_id)
    new = theirs[0, ids.size(1):].tolist()
    if tok.eos_id in new:  # lmlab stops at EOS without returning it
        new = new[:new.index(tok.eos_id)]
    assert new == ours.tokens and len(new) > 0


def test_test_split_perplexity_through_transformers_equals_the_summary(exported, tiny_run):
    summary = json.loads((tiny_run / "summary.json").read_text())
    cfg = OmegaConf.create(exported["ckpt"]["config"])
    _, splits = load_splits(cfg.data, cfg.tokenizer)
    tokens = splits["test"].tokens
    rows = packed_rows(len(tokens), cfg.model.max_seq_len)  # lmlab's non-overlapping windows
    nll, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), 256):
            batch = collate(tokens, rows[i:i + 256], exported["tok"].eos_id)
            logits = exported["hf_model"](batch["x"], attention_mask=batch["pad_mask"].long()).logits
            nll += F.cross_entropy(logits.flatten(0, 1), batch["y"].flatten(), ignore_index=IGNORE,
                                   reduction="sum").item()
            n += int((batch["y"] != IGNORE).sum())
    assert n == len(tokens) - 1
    assert math.exp(nll / n) == pytest.approx(summary["test_ppl"], rel=1e-4)


def test_a_document_masked_model_is_refused_in_one_line(exported, tiny_run, tmp_path):
    model, tok, ckpt = exported["model"], exported["tok"], exported["ckpt"]
    config = {**ckpt["config"], "model": {**ckpt["config"]["model"], "doc_mask": True}}
    path = tmp_path / "doc_mask.pt"
    save_checkpoint(path, model, tok.ref, ckpt["train_state"], config)
    r = export_cli(f"checkpoint={path}", f"out={tmp_path / 'out'}")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"lmlab.export: error: cannot export {path}: it was trained with model.doc_mask=true (tokens never attend "
        "across an EOS); GPT-2 in transformers attends across documents, so it would score text differently"]
    assert not (tmp_path / "out").exists()
    r = export_cli(f"checkpoint={path}")
    assert r.returncode == 2 and r.stderr.strip() == "lmlab.export: error: out=... is required"


def test_padding_rows_of_the_embedding_are_not_exported():
    model = GPT(GPTConfig(vocab_size=300, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_seq_len=8))
    assert model.wte.weight.shape == (320, 16)  # padded to a multiple of 64: 20 rows past the real tokens
    state = gpt2_state_dict(model)
    assert state["transformer.wte.weight"].shape == state["lm_head.weight"].shape == (300, 16)
    assert torch.equal(state["transformer.wte.weight"], model.wte.weight[:300])
    assert torch.equal(state["transformer.h.0.attn.c_attn.weight"], model.blocks[0].attn.qkv.weight.t())


def test_gpt2_tokenizer_converts_from_tiktoken(monkeypatch):
    """tokenizer=gpt2 runs export tiktoken's encoding; offline there are no GPT-2 files, so a small
    encoding with GPT-2's pattern and real merges stands in for it."""
    tiktoken = pytest.importorskip("tiktoken")
    from lmlab.data import tokenizer as tokenizer_mod

    ranks = {bytes([b]): b for b in range(256)}
    for merged in [b"th", b"he", b"the", b" t", b" the", b"in", b"ing", b" a", b"an", b" an", b"er", b"\xc3\xa9"]:
        ranks[merged] = len(ranks)
    gpt2_pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    encoding = tiktoken.Encoding("tiny-gpt2", pat_str=gpt2_pattern, mergeable_ranks=ranks,
                                 special_tokens={"<|endoftext|>": len(ranks)})
    monkeypatch.setattr(tokenizer_mod, "_tiktoken_gpt2", lambda: encoding)
    ours = tokenizer_mod.Tokenizer({"kind": "gpt2"})
    theirs = fast_tokenizer(ours, max_length=64)
    text = " the thing in the garden, an anther... Café crème brûlée 1,000 @-@ they're\n\n = Title = \n"
    assert theirs(text, add_special_tokens=False)["input_ids"] == ours.encode(text)
    assert theirs.eos_token_id == ours.eos_id == len(ranks)
    assert theirs.decode(ours.encode(text)) == text


def test_a_conversion_that_changes_the_logits_writes_nothing(tiny_run, tmp_path, monkeypatch):
    def transposed_attention(model):  # the mistake a rename can make: a Conv1D weight left untransposed
        state = gpt2_state_dict(model)
        key = "transformer.h.0.attn.c_proj.weight"
        return {**state, key: state[key].t().contiguous()}

    monkeypatch.setattr(lmlab.export, "gpt2_state_dict", transposed_attention)
    with pytest.raises(ExportError, match="logits differ from lmlab's by up to .*; nothing was written"):
        export(tiny_run / "checkpoints" / "best.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()
