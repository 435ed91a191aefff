"""`python -m lmlab.generate checkpoint=PATH prompt="..." max_new_tokens=200 temperature=0.8 top_k=50 top_p=0.95 seed=0`

Prints the prompt and its continuation, sampled from a checkpoint alone. The prompt follows an
EOS, the beginning-of-text token every training document also follows. The KV cache makes each
new token one forward pass of one position. Generation stops at EOS, after max_new_tokens, or when
the context is full: it stops rather than crops, because with absolute positions a cropped window
would have to be recomputed from scratch at every step.

`sample` is the library function; `eval_sampler` is the trainer's hook that writes a few fixed
prompts' samples to `samples.jsonl` (and a W&B table) at each evaluation.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from omegaconf import MISSING
from omegaconf.errors import OmegaConfBaseException

from lmlab.cli import parse_key_values
from lmlab.metrics import REPEAT_N, repeated_ngram_share

if TYPE_CHECKING:  # torch is imported where a model runs: --help answers without it
    import torch

# Samples at evaluation are short and seeded the same each time, so successive ones differ only
# through the weights and barely add to evaluation time.
EVAL_TEMPERATURE, EVAL_TOP_K, EVAL_TOP_P = 0.8, 50, 0.95


@dataclass
class GenerateConfig:
    checkpoint: str = MISSING
    prompt: str = ""
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0 = greedy
    top_k: Optional[int] = 50  # null = no top-k filter
    top_p: Optional[float] = 0.95  # null = no nucleus filter
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class Generation:
    prompt: str
    text: str  # the continuation only
    tokens: list[int]  # the continuation's token ids
    stop: str  # eos | max_new_tokens | context
    seconds: float  # prefill and every step

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds else 0.0


def next_token_probs(logits: torch.Tensor, temperature: float, top_k: int | None,
                     top_p: float | None) -> torch.Tensor:
    """The sampling distribution over the vocabulary from one position's logits."""
    import torch

    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(), logits.numel()).float()
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # The smallest head of the sorted distribution whose mass reaches top_p: a token stays
        # when the mass before it is still short of top_p, so the most likely token always stays.
        sorted_probs[sorted_probs.cumsum(0) - sorted_probs >= top_p] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return probs / probs.sum()


def _check(temperature: float, top_k: int | None, top_p: float | None, max_new_tokens: int) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or null, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or null, got {top_p}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")


def sample(model, tokenizer, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
           top_k: int | None = 50, top_p: float | None = 0.95,
           generator: torch.Generator | None = None) -> Generation:
    """Continue `prompt` in eval mode (the caller's mode is restored). Draws from `generator`
    (a CPU generator; the global RNG when None): the trainer passes its own, so a run that samples
    at its evaluations stays bit-for-bit the run it would have been."""
    import torch

    _check(temperature, top_k, top_p, max_new_tokens)
    ids = [tokenizer.eos_id] + tokenizer.encode(prompt)
    context = model.cfg.max_seq_len
    if len(ids) > context:
        raise ValueError(f"the prompt is {len(ids) - 1} tokens; with the leading EOS that exceeds the "
                         f"model's context of max_seq_len={context} tokens")
    with torch.no_grad():
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            started = time.perf_counter()
            cache = model.new_cache()
            logits = model(torch.tensor([ids], device=device), cache=cache)[0, -1]
            new, stop = [], "max_new_tokens"
            while len(new) < max_new_tokens:
                if new:
                    if len(ids) + len(new) > context:
                        stop = "context"
                        break
                    logits = model(torch.tensor([new[-1:]], device=device), cache=cache)[0, -1]
                probs = next_token_probs(logits, temperature, top_k, top_p).cpu()
                token = int(torch.multinomial(probs, 1, generator=generator))
                if token == tokenizer.eos_id:
                    stop = "eos"
                    break
                new.append(token)
            seconds = time.perf_counter() - started
        finally:
            model.train(was_training)
    return Generation(prompt, tokenizer.decode(new), new, stop, seconds)


PROMPT_WORDS = 3  # a corpus's own prompts: the first words of its first validation documents


def corpus_prompts(cfg, tokenizer, split) -> list[str]:
    """eval.sample_prompts, unless they are left at the schema's default, WikiText's (" = Valkyria
    Chronicles = "), on another corpus: then the first PROMPT_WORDS words of as many of `split`'s
    documents, so that samples continue the run's own kind of text."""
    from lmlab.config import EvalConfig
    from lmlab.data.sources import corpus_kind
    from lmlab.data.tokenizer import EOS

    prompts = list(cfg.eval.sample_prompts)
    if corpus_kind(cfg.data) == "wikitext" or prompts != EvalConfig().sample_prompts:
        return prompts
    ends = [i for i, token in enumerate(split.tokens[:100_000].tolist()) if token == tokenizer.eos_id]
    starts = [0, *(end + 1 for end in ends)][:len(prompts)]
    openings = [" ".join(tokenizer.decode(split.tokens[s:s + 4 * PROMPT_WORDS].tolist()).split(EOS)[0].split()
                         [:PROMPT_WORDS]) for s in starts]
    return [opening for opening in openings if opening] or prompts


def eval_sampler(cfg, tokenizer, tracker, run_dir: Path):
    """The trainer's `on_eval` hook: cfg.eval.sample_tokens tokens for each of
    cfg.eval.sample_prompts, appended to run_dir/samples.jsonl and logged as a W&B table.
    None when cfg.eval.sample_tokens is 0."""
    if not cfg.eval.sample_tokens or not cfg.eval.sample_prompts:
        return None
    import torch

    prompts, n_tokens, seed = list(cfg.eval.sample_prompts), cfg.eval.sample_tokens, cfg.train.seed

    def on_eval(model, state, final: bool = False) -> None:
        generator = torch.Generator().manual_seed(seed)
        samples = [sample(model, tokenizer, prompt, n_tokens, EVAL_TEMPERATURE, EVAL_TOP_K, EVAL_TOP_P, generator)
                   for prompt in prompts]
        rows = [[state.step, state.tokens, s.prompt, s.text, repeated_ngram_share(s.tokens)] for s in samples]
        columns = ["step", "tokens", "prompt", "text", f"repeated_{REPEAT_N}grams"]
        with open(run_dir / "samples.jsonl", "a", encoding="utf-8") as f:
            f.writelines(json.dumps(dict(zip(columns, row))) + "\n" for row in rows)
        tracker.log_table("samples", columns, rows)

    return on_eval


def last_samples_quality(run_dir: Path) -> dict:
    """summary.json's `sample_repeated_4grams`: the mean repeated 4-gram share of the samples of
    the last evaluation in run_dir/samples.jsonl (None without samples): "incoherent text" measured."""
    path, key = run_dir / "samples.jsonl", f"repeated_{REPEAT_N}grams"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []
    last = [row[key] for row in rows if row["step"] == rows[-1]["step"] and row.get(key) is not None]
    return {f"sample_{key}": sum(last) / len(last) if last else None}


def parse_args(argv: list[str]) -> GenerateConfig:
    """key=value arguments into a typed GenerateConfig; the prompt and the path are taken verbatim."""
    return parse_key_values(GenerateConfig, argv, verbatim=("prompt", "checkpoint"), doc=__doc__)


def main(argv: list[str] | None = None) -> None:
    from lmlab.errors import exit_bad_input

    try:
        cfg = parse_args(sys.argv[1:] if argv is None else argv)  # --help answers here, before torch loads
    except (ValueError, OmegaConfBaseException) as e:
        exit_bad_input(e, "lmlab.generate")
    import torch

    from lmlab.checkpoint import CheckpointError, load_model
    from lmlab.runtime import resolve_device

    try:
        device = resolve_device(cfg.device)
        model, tokenizer, _ = load_model(cfg.checkpoint, map_location=device)
        out = sample(model, tokenizer, cfg.prompt, cfg.max_new_tokens, cfg.temperature, cfg.top_k,
                     cfg.top_p, torch.Generator().manual_seed(cfg.seed))
    except (ValueError, CheckpointError, OmegaConfBaseException) as e:
        exit_bad_input(e, "lmlab.generate")
    print(out.prompt + out.text)
    print(f"{len(out.tokens)} tokens in {out.seconds:.2f} s ({out.tokens_per_s:,.1f} tokens/s on "
          f"{device}), stopped: {out.stop}", file=sys.stderr)


if __name__ == "__main__":
    main()
