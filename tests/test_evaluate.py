"""Evaluation you can trust: the three perplexities equal a direct computation, sliding windows
score every token once, word and byte counts follow the WikiText convention, and a checkpoint
rebuilds its model alone."""
import json
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lmlab import load_model
from lmlab.checkpoint import save_checkpoint
from lmlab.data import Sampler, Split, collate, packed_rows, strided_rows
from lmlab.data.sources import read_split, text_to_score, word_count
from lmlab.data.tokenizer import train_bpe
from lmlab.distributed import Ranks
from lmlab.scoring import evaluate
from lmlab.model import GPT, GPTConfig
from lmlab.step import batch_loss, make_optimizer
from tests.conftest import REPO, WT2_RAW, compose_config, needs_wt2_raw, run_cli

CFG = GPTConfig(vocab_size=24, d_model=32, n_heads=2, n_layers=2, d_ff=64, max_seq_len=16)


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny matrices: a second thread only fights the other processes for the CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_gpt(cfg=CFG) -> GPT:
    torch.manual_seed(0)
    return GPT(cfg)


def test_three_perplexities_equal_a_direct_computation():
    model = tiny_gpt().eval()
    tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, 50)
    split = Split("test", tokens, n_docs=1, n_words=20, n_bytes=90)
    result = evaluate(model, split, packed_rows(len(tokens), CFG.max_seq_len), eos_id=0, batch_size=3, runtime="cpu")

    # Directly: one window at a time, no collate, no padding, no cross_entropy.
    nll, n = 0.0, 0
    for start in range(0, len(tokens) - 1, CFG.max_seq_len):
        window = torch.from_numpy(tokens[start:start + CFG.max_seq_len + 1])
        logp = torch.log_softmax(model(window[None, :-1])[0], dim=-1)
        nll -= logp.gather(1, window[1:, None]).sum().item()
        n += len(window) - 1
    assert result.n_tokens == n == 49
    assert result.nll == pytest.approx(nll, rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(nll / 49), rel=1e-5)
    assert result.word_ppl == pytest.approx(math.exp(nll / 20), rel=1e-5)
    assert result.bpb == pytest.approx(nll / (math.log(2) * 90), rel=1e-5)
    assert result.metrics("test") == {"test_loss": result.loss, "test_ppl": result.ppl,
                                      "test_word_ppl": result.word_ppl, "test_bpb": result.bpb,
                                      "test_eos_logp": -result.eos_nll / result.eos_tokens}


def test_part_of_a_split_reports_no_word_ppl_or_bpb():
    tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, 200)
    result = evaluate(tiny_gpt(), Split("test", tokens, 1, 20, 90), packed_rows(200, 16), 0, 4, "cpu", max_batches=1)
    # Word and byte counts belong to the whole split: dividing part of its NLL by them would flatter.
    assert result.n_tokens == 4 * 16 and result.word_ppl is None and result.bpb is None


def test_stride_equal_to_the_context_is_the_non_overlapping_evaluation():
    model = tiny_gpt()
    tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, 101)
    split = Split("validation", tokens, 1, 30, 120)
    assert np.array_equal(strided_rows(101, 16, 16), packed_rows(101, 16))
    a = evaluate(model, split, packed_rows(101, 16), 0, 4, "cpu")
    b = evaluate(model, split, strided_rows(101, 16, 16), 0, 4, "cpu")
    assert (a.nll, a.n_tokens) == (b.nll, b.n_tokens)


def copy_stream(n_blocks: int, seed: int, period: int = 6) -> np.ndarray:
    """Blocks of a random pattern repeated 4 times: after one period, the context gives away the next token."""
    rng = np.random.default_rng(seed)
    return np.concatenate([np.tile(rng.integers(1, CFG.vocab_size, period), 4) for _ in range(n_blocks)])


def test_strided_eval_scores_each_token_once_and_gives_a_trained_model_more_context():
    model = tiny_gpt()
    train = copy_stream(300, seed=0)
    opt = make_optimizer(model, OmegaConf.create({"weight_decay": 0.0, "beta1": 0.9, "beta2": 0.95}), fused=False)
    for group in opt.param_groups:
        group["lr"] = 3e-3
    sampler = Sampler(packed_rows(len(train), CFG.max_seq_len), batch_size=16, seed=0)
    for _ in range(300):
        batch_loss(model, collate(train, sampler.next_rows(), 0), "cpu").backward()
        opt.step()
        opt.zero_grad()

    val = copy_stream(40, seed=1)
    split = Split("validation", val, 1, 100, 400)
    windows = evaluate(model, split, packed_rows(len(val), 16), 0, 64, "cpu")
    sliding = {s: evaluate(model, split, strided_rows(len(val), 16, s), 0, 64, "cpu") for s in (4, 8)}
    for result in sliding.values():
        assert result.n_tokens == windows.n_tokens == len(val) - 1
    # Every token scored with >= 8 tokens of context beats windows whose first tokens see almost none.
    assert sliding[4].loss < windows.loss and sliding[8].loss < windows.loss


@needs_wt2_raw
def test_word_and_byte_counts_match_the_official_wikitext_numbers(tmp_path):
    for name in ("train", "valid", "test"):  # the reader wants all three splits; train is a stand-in
        (tmp_path / f"wiki.{name}.raw").symlink_to(WT2_RAW / f"wiki.{'test' if name == 'train' else name}.raw")
    data_cfg = OmegaConf.create({"local_dir": str(tmp_path), "hub_config": "wikitext-2-raw-v1"})
    for split, words in (("validation", 217_646), ("test", 245_569)):
        lines = read_split(data_cfg, split)
        assert word_count(lines) == words  # the denominators published WikiText results use
        raw = WT2_RAW / f"wiki.{'valid' if split == 'validation' else 'test'}.raw"
        assert len("".join(lines).encode()) == raw.stat().st_size  # bits per byte: every byte of the file


def test_checkpoint_alone_rebuilds_the_model_with_identical_logits(tmp_path):
    # n_heads=8 leaves every weight shape as the default n_heads=4 would: a rebuild that guessed
    # the config instead of reading it would load the weights without error and compute other logits.
    cfg = GPTConfig(vocab_size=300, d_model=32, n_heads=8, n_layers=3, d_ff=48, max_seq_len=24, dropout=0.1)
    model = tiny_gpt(cfg).eval()
    tokenizer_ref = train_bpe(["a checkpoint holds its own model config and tokenizer"] * 4, 300)
    save_checkpoint(tmp_path / "best.pt", model, tokenizer_ref, {"step": 0}, {"note": "no Hydra here"})

    rebuilt, tokenizer, ckpt = load_model(tmp_path / "best.pt")
    assert rebuilt.cfg == cfg and not rebuilt.training
    x = torch.tensor([tokenizer.encode("a checkpoint holds its own model")])
    assert torch.equal(rebuilt(x), model(x))
    guessed = GPT(GPTConfig(vocab_size=300, d_model=32, n_layers=3, d_ff=48, max_seq_len=24)).eval()
    guessed.load_state_dict(ckpt["model"])
    assert not torch.allclose(guessed(x), model(x))


def test_scores_split_the_nll_by_document_and_by_window_position():
    """Per-document and per-position sums equal a direct computation, and add up to the split's NLL."""
    model = tiny_gpt().eval()
    rng = np.random.default_rng(3)
    docs = [rng.integers(1, CFG.vocab_size, n) for n in (5, 30, 1, 12)]  # every document ends in EOS (0)
    tokens = np.concatenate([np.append(d, 0) for d in docs])
    rows = packed_rows(len(tokens), CFG.max_seq_len)
    result = evaluate(model, Split("test", tokens, 4, 20, 90), rows, eos_id=0, batch_size=2, runtime="cpu")

    doc_nll, doc_tokens = np.zeros(4), np.zeros(4, dtype=int)
    pos_nll, pos_tokens = np.zeros(CFG.max_seq_len), np.zeros(CFG.max_seq_len, dtype=int)
    eos_nll = []
    doc_of = np.cumsum(np.concatenate([[0], tokens[:-1] == 0]))  # the EOS ending a document is that document's
    for start, end, _ in rows:
        window = torch.from_numpy(tokens[start:end])
        logp = torch.log_softmax(model(window[None, :-1])[0], dim=-1)
        nll = -logp.gather(1, window[1:, None])[:, 0].double().detach().numpy()
        for t, target in enumerate(range(start + 1, end)):
            doc_nll[doc_of[target]] += nll[t]
            doc_tokens[doc_of[target]] += 1
            pos_nll[t] += nll[t]
            pos_tokens[t] += 1
            if tokens[target] == 0:
                eos_nll.append(nll[t])
    scores = result.scores()
    assert scores["window"] == CFG.max_seq_len
    assert scores["doc_tokens"] == doc_tokens.tolist() == [5, 31, 2, 13]  # the first token is never a target
    assert scores["doc_nll"] == pytest.approx(doc_nll.tolist(), rel=1e-5)
    assert scores["position_tokens"] == pos_tokens.tolist()
    assert scores["position_loss"] == pytest.approx((pos_nll / pos_tokens).tolist(), rel=1e-5)
    assert sum(scores["doc_nll"]) / sum(scores["doc_tokens"]) == pytest.approx(result.loss, rel=1e-12)
    # Each document is named by its tokens (its EOS included), wherever it stands in the split.
    assert len(set(scores["doc_hash"])) == 4
    moved = evaluate(model, Split("test", np.concatenate([np.append(d, 0) for d in docs[::-1]]), 4, 20, 90),
                     rows, eos_id=0, batch_size=2, runtime="cpu").scores()
    assert moved["doc_hash"] == scores["doc_hash"][::-1]
    # log P(EOS) where a document ends: the mean over the 4 scored EOS targets.
    assert len(eos_nll) == 4 and result.metrics("test")["test_eos_logp"] == pytest.approx(-np.mean(eos_nll), rel=1e-5)


def test_ranks_each_score_their_batches_and_the_sums_cover_the_split():
    """Without a process group each rank's result is its own share: the shares add up to one process's."""
    model = tiny_gpt().eval()
    tokens = np.random.default_rng(4).integers(0, CFG.vocab_size, 300)  # token 0 is EOS: many documents
    split, rows = Split("test", tokens, 1, 20, 90), strided_rows(300, CFG.max_seq_len, 8)
    whole = evaluate(model, split, rows, 0, 3, "cpu").scores()
    shares = [evaluate(model, split, rows, 0, 3, "cpu", ranks=Ranks(rank, 2)).scores() for rank in (0, 1)]
    for key in ("doc_nll", "doc_tokens", "position_tokens"):
        assert np.add(shares[0][key], shares[1][key]) == pytest.approx(whole[key], rel=1e-9), key
    assert len(whole["doc_nll"]) == int((tokens[:-1] == 0).sum()) + 1
    # After the first window, sliding windows score their last 8 positions only.
    assert whole["position_tokens"][:8] == [1] * 8 and min(whole["position_tokens"][8:]) > 1


def test_evaluate_cli_scores_a_checkpoint_on_another_corpus(tiny_run, tmp_path):
    """A model of the King James Bible on another corpus (data=text: lmlab's own docs, one file, cut
    into passages), tokenized with its own BPE: worse per byte than on its own test split, and all
    of the other corpus scored (nothing is trained on it, so nothing is carved)."""
    other = tmp_path / "docs.txt"
    pages = [p.read_text(encoding="utf-8") for p in sorted((REPO / "docs").glob("*.md"))]
    # A page that writes out the end-of-text token would add a document boundary of its own.
    other.write_text("".join(page for page in pages if "<|endoftext|>" not in page), encoding="utf-8")
    out = tmp_path / "docs.json"
    r = run_cli([f"checkpoint={tiny_run / 'checkpoints' / 'best.pt'}", "data=text", f"data.local_dir={other}",
                 f"out={out}"], cwd=REPO, module="lmlab.evaluate")
    assert r.returncode == 0, r.stderr[-3000:]
    scores, own = json.loads(out.read_text()), json.loads((tiny_run / "summary.json").read_text())
    assert scores["test_bpb"] > own["test_bpb"] and scores["test_word_ppl"] > 0
    text, what = text_to_score(compose_config(["data=text", f"data.local_dir={other}"]).data, "test")
    assert len(text.documents) > 1 and what == "all of it (it has no test split)"
    assert len(scores["scores"]["doc_nll"]) == len(text.documents)
    assert scores["test_bpb"] == pytest.approx(sum(scores["scores"]["doc_nll"]) / (math.log(2) * text.n_bytes))
