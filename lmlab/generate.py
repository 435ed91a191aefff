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
from typing import Optional

import torch
from omegaconf import MISSING
from omegaconf.errors import OmegaConfBaseException

from lmlab.cli import parse_key_values

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


@torch.no_grad()
def sample(model, tokenizer, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
           top_k: int | None = 50, top_p: float | None = 0.95,
           generator: torch.Generator | None = None) -> Generation:
    """Continue `prompt` in eval mode (the caller's mode is restored). Draws from `generator`
    (a CPU generator; the global RNG when None): the trainer passes its own, so a run that samples
    at its evaluations stays bit-for-bit the run it would have been."""
    _check(temperature, top_k, top_p, max_new_tokens)
    ids = [tokenizer.eos_id] + tokenizer.encode(prompt)
    context = model.cfg.max_seq_len
    if len(ids) > context:
        raise ValueError(f"the prompt is {len(ids) - 1} tokens; with the leading EOS that exceeds the "
                         f"model's context of max_seq_len={context} tokens")
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


def eval_sampler(cfg, tokenizer, tracker, run_dir: Path):
    """The trainer's `on_eval` hook: cfg.eval.sample_tokens tokens for each of
    cfg.eval.sample_prompts, appended to run_dir/samples.jsonl and logged as a W&B table.
    None when cfg.eval.sample_tokens is 0."""
    if not cfg.eval.sample_tokens or not cfg.eval.sample_prompts:
        return None
    prompts, n_tokens, seed = list(cfg.eval.sample_prompts), cfg.eval.sample_tokens, cfg.train.seed

    def on_eval(model, state) -> None:
        generator = torch.Generator().manual_seed(seed)
        rows = [[state.step, state.tokens, prompt,
                 sample(model, tokenizer, prompt, n_tokens, EVAL_TEMPERATURE, EVAL_TOP_K, EVAL_TOP_P, generator).text]
                for prompt in prompts]
        columns = ["step", "tokens", "prompt", "text"]
        with open(run_dir / "samples.jsonl", "a", encoding="utf-8") as f:
            f.writelines(json.dumps(dict(zip(columns, row))) + "\n" for row in rows)
        tracker.log_table("samples", columns, rows)

    return on_eval


def parse_args(argv: list[str]) -> GenerateConfig:
    """key=value arguments into a typed GenerateConfig; the prompt and the path are taken verbatim."""
    return parse_key_values(GenerateConfig, argv, verbatim=("prompt", "checkpoint"), doc=__doc__)


def main(argv: list[str] | None = None) -> None:
    from lmlab.checkpoint import CheckpointError, load_model
    from lmlab.errors import exit_bad_input
    from lmlab.runtime import resolve_device

    try:
        cfg = parse_args(sys.argv[1:] if argv is None else argv)
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
