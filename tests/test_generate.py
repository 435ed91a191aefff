"""Generation: sampling filters, the KV cache, the stops (EOS, length, context), the CLI, samples at
each evaluation, and the seed's bug that made text run on forever: EOS is learned."""
import json
import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from lmlab import load_model
from lmlab.data import collate, load_splits, strided_rows
from lmlab.generate import eval_sampler, last_samples_quality, next_token_probs, parse_args, sample
from lmlab.metrics import repeated_ngram_share
from lmlab.model import GPT, GPTConfig
from lmlab.train import TrainState
from tests.conftest import REPO, TINY, compose_config, run_cli



class ByteTokenizer:
    """UTF-8 bytes shifted by one; id 0 is EOS."""
    eos_id, vocab_size = 0, 257

    def encode(self, text):
        return [b + 1 for b in text.encode()]

    def decode(self, ids):
        return bytes(i - 1 for i in ids if i).decode(errors="replace")


def byte_gpt(max_seq_len=32) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=257, d_model=32, n_heads=2, n_layers=2, d_ff=64, max_seq_len=max_seq_len))


def test_temperature_top_k_and_top_p():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    close = lambda probs, expected: torch.testing.assert_close(probs, torch.tensor(expected))  # noqa: E731
    close(next_token_probs(logits, 1.0, None, None), [0.5, 0.3, 0.15, 0.05])
    close(next_token_probs(logits, 0.0, 50, 0.9), [1.0, 0.0, 0.0, 0.0])  # temperature 0 is greedy
    close(next_token_probs(logits, 1.0, 2, None), [0.625, 0.375, 0.0, 0.0])
    # top_p keeps the smallest head whose mass reaches p: 0.5 alone reaches 0.5; 0.6 needs two.
    close(next_token_probs(logits, 1.0, None, 0.5), [1.0, 0.0, 0.0, 0.0])
    close(next_token_probs(logits, 1.0, None, 0.6), [0.625, 0.375, 0.0, 0.0])
    hot = np.sqrt([0.5, 0.3, 0.15, 0.05])
    close(next_token_probs(logits, 2.0, None, None), (hot / hot.sum()).astype(np.float32).tolist())


def test_kv_cache_generation_equals_recomputing_the_whole_sequence():
    model, tok = byte_gpt().eval(), ByteTokenizer()
    out = sample(model, tok, "Once upon", max_new_tokens=12, temperature=0)
    ids = [tok.eos_id] + tok.encode("Once upon")
    for _ in range(len(out.tokens)):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert out.tokens == ids[-len(out.tokens):] and out.stop == "max_new_tokens" and len(out.tokens) == 12
    assert out.text == tok.decode(out.tokens) and out.tokens_per_s > 0


def test_a_full_context_stops_generation_and_a_too_long_prompt_is_refused():
    model, tok = byte_gpt(max_seq_len=16), ByteTokenizer()
    out = sample(model, tok, "abcdefghij", max_new_tokens=100, temperature=0)
    # EOS + 10 prompt tokens + 6 new = 17: the 16 positions of context were all used, and the last
    # token, sampled from the full context, is kept rather than fed.
    assert out.stop == "context" and len(out.tokens) == 6
    with pytest.raises(ValueError, match="max_seq_len=16"):
        sample(model, tok, "x" * 16, max_new_tokens=5)


def test_samples_at_evaluation_leave_training_untouched(tmp_path):
    model, tok = byte_gpt().train(), ByteTokenizer()

    class Tracker:
        tables = []

        def log_table(self, key, columns, rows):
            self.tables.append((key, columns, rows))

    cfg = OmegaConf.create({"eval": {"sample_tokens": 5, "sample_prompts": [" The", " In 1990"]}, "train": {"seed": 0}})
    tracker = Tracker()
    on_eval = eval_sampler(cfg, tok, tracker, tmp_path)
    rng = torch.get_rng_state()
    on_eval(model, TrainState(step=7, tokens=700))
    on_eval(model, TrainState(step=9, tokens=900))
    assert model.training  # back in train mode for the next step
    assert torch.equal(torch.get_rng_state(), rng)  # dropout and data order draw as they would have
    records = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [(r["step"], r["tokens"], r["prompt"]) for r in records] == \
        [(7, 700, " The"), (7, 700, " In 1990"), (9, 900, " The"), (9, 900, " In 1990")]
    assert all(len(tok.encode(r["text"])) <= 5 * 4 for r in records)
    # Same weights, same seed at every evaluation: the samples change only when the model does.
    assert [r["text"] for r in records[:2]] == [r["text"] for r in records[2:]]
    assert [t[0] for t in tracker.tables] == ["samples", "samples"]
    assert tracker.tables[0][1] == ["step", "tokens", "prompt", "text", "repeated_4grams"]
    assert len(tracker.tables[0][2]) == 2
    # Each sample's repeated 4-gram share, and the summary's mean over the last evaluation's.
    shares = [repeated_ngram_share(tok.encode(r["text"])) for r in records]
    assert [r["repeated_4grams"] for r in records] == pytest.approx(shares)
    assert last_samples_quality(tmp_path) == {"sample_repeated_4grams": pytest.approx(np.mean(shares[2:]))}
    assert last_samples_quality(tmp_path / "nowhere") == {"sample_repeated_4grams": None}
    cfg.eval.sample_tokens = 0
    assert eval_sampler(cfg, tok, tracker, tmp_path) is None


def test_the_repeated_ngram_share_counts_the_n_grams_seen_before():
    assert repeated_ngram_share([1, 2, 3, 4, 5, 6]) == 0.0  # 3 distinct 4-grams
    assert repeated_ngram_share([7, 7, 7, 7, 7, 7]) == pytest.approx(2 / 3)  # (7,7,7,7) three times
    assert repeated_ngram_share([1, 2, 3, 1, 2, 3, 1]) == pytest.approx(1 / 4)  # (1,2,3,1) again at the end
    assert repeated_ngram_share([1, 2, 3, 4]) is None  # one 4-gram: nothing to repeat


def test_arguments_are_typed_and_the_prompt_is_verbatim():
    cfg = parse_args(["checkpoint=a.pt", "prompt= Title: a = b", "top_k=null", "temperature=0", "max_new_tokens=7"])
    assert (cfg.prompt, cfg.top_k, cfg.temperature, cfg.max_new_tokens) == (" Title: a = b", None, 0.0, 7)
    assert cfg.top_p == 0.95 and cfg.seed == 0  # the defaults
    with pytest.raises(ValueError, match=r"checkpoint=\.\.\. is required"):
        parse_args(["prompt=x"])
    with pytest.raises(ValueError, match="key one of checkpoint, prompt"):
        parse_args(["checkpoint=a.pt", "tokens=5"])
    with pytest.raises(ValidationError, match="max_new_tokens"):
        parse_args(["checkpoint=a.pt", "max_new_tokens=many"])


@pytest.mark.parametrize("module, flag, keys", [
    ("lmlab.generate", "--help", ["checkpoint=PATH", "max_new_tokens=200", "top_p=0.95", "prompt=\"\""]),
    ("lmlab.export", "-h", ["checkpoint=PATH", "out=DIR"]),
    ("lmlab.lmeval", "--help", ["checkpoint=PATH", "batch_size=16", "limit=null"]),
    ("lmlab.rescore", "--help", ["arm=baseline", "as_arm=bug_eval_train_mode", "mode=train"])])
def test_help_prints_the_usage_page_and_exits_0(module, flag, keys):
    r = run_cli([flag], cwd=REPO, module=module)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(f"python -m {module}") and all(key in r.stdout for key in keys), r.stdout


# --- Trained end to end through the CLI on a corpus where every article ends in " The end ." ---

WORDS = "river stone green quiet house north music paper light storm field glass".split()
ENDING = " The end . \n"


def article(rng) -> str:
    lines = [f" = {' '.join(rng.choice(WORDS, 2))} = \n"]
    lines += [f" {' '.join(rng.choice(WORDS, rng.integers(4, 9)))} . \n" for _ in range(rng.integers(1, 4))]
    return "".join(lines) + ENDING


@pytest.fixture(scope="module")
def ending_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ending")
    rng = np.random.default_rng(0)
    for name, n in (("train", 80), ("valid", 20), ("test", 20)):
        (root / f"wiki.{name}.raw").write_text("".join(article(rng) for _ in range(n)))
    overrides = [f"data.local_dir={root}", f"data.cache_dir={root / 'cache'}", *TINY, "tokenizer.vocab_size=300"]
    run_dir = root / "run"
    r = run_cli([*overrides, "train.max_steps=200", "train.eval_every=100", "schedule.warmup_steps=10",
                 "schedule.peak_lr=3e-3", "eval.sample_tokens=8", f"hydra.run.dir={run_dir}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir, overrides


def test_eos_is_learned_where_every_document_ends(ending_run):
    run_dir, overrides = ending_run
    model, tokenizer, _ = load_model(run_dir / "checkpoints" / "best.pt")
    _, splits = load_splits(*(lambda c: (c.data, c.tokenizer))(compose_config(overrides)))
    tokens, eos = splits["validation"].tokens, tokenizer.eos_id
    batch = collate(tokens, strided_rows(len(tokens), 32, 8), eos)  # every prediction sees >= 24 tokens
    with torch.no_grad():
        p_eos = torch.softmax(model(batch["x"], pad_mask=batch["pad_mask"]), dim=-1)[..., eos]
    at_ends = p_eos[batch["y"] == eos]
    assert len(at_ends) == splits["validation"].n_docs == 20
    assert at_ends.min() > 0.5, at_ends
    # And generation stops there: greedy decoding of a finished article emits EOS at once.
    out = sample(model, tokenizer, " = river stone = \n quiet house north music . \n" + ENDING, temperature=0)
    assert out.stop == "eos" and out.tokens == []


def test_samples_written_at_each_evaluation(ending_run):
    run_dir, _ = ending_run
    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    prompts = compose_config([]).eval.sample_prompts
    assert [(r["step"], r["prompt"]) for r in records] == [(s, p) for s in (0, 100, 200) for p in prompts]
    assert all(isinstance(r["text"], str) for r in records)


def test_generate_cli_prints_text_and_tokens_per_s_and_refuses_a_long_prompt(ending_run):
    run_dir, _ = ending_run
    ckpt = run_dir / "checkpoints" / "best.pt"
    args = [f"checkpoint={ckpt}", "prompt= = river stone = \n", "max_new_tokens=20", "temperature=0.8", "device=cpu",
            "top_k=50", "top_p=0.95", "seed=3"]
    r = run_cli(args, cwd=REPO, module="lmlab.generate")
    assert r.returncode == 0, r.stderr
    model, tokenizer, _ = load_model(ckpt)
    expected = sample(model, tokenizer, " = river stone = \n", 20, 0.8, 50, 0.95, torch.Generator().manual_seed(3))
    assert r.stdout == " = river stone = \n" + expected.text + "\n"  # the CLI is the library, seeded
    assert re.search(rf"^{len(expected.tokens)} tokens in [\d.]+ s \([\d,.]+ tokens/s on cpu\), stopped: "
                     rf"{expected.stop}$", r.stderr, re.M), r.stderr

    r = run_cli([f"checkpoint={ckpt}", "prompt=" + " river" * 40], cwd=REPO, module="lmlab.generate")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "max_seq_len=32" in r.stderr, r.stderr
