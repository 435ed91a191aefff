"""What the reference floors cost on a training stream of any size, with no corpus at hand:

    python -m lmlab.data.floors_cost --tokens 120_000_000   # WikiText-103's training split at BPE-8192

Tokens are drawn independently from a Zipf law over the vocabulary (p(rank r) proportional to
1/r, a BPE corpus's unigram shape), validation and test alike. Printed: wall and CPU seconds of
`compute_floors`, and its peak memory per training token, two ways: tracemalloc's peak (the most
bytes numpy and Python held at once during the call, beyond what they held before it: the streams
themselves are not counted) and the process's peak RSS minus its RSS before the call.
"""
from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np

CHUNK = 1 << 22  # tokens drawn at a time, so that drawing them does not raise the peak RSS measured after


def zipf_stream(n_tokens: int, vocab_size: int, rng: np.random.Generator) -> np.ndarray:
    p = 1.0 / np.arange(1, vocab_size + 1)
    p /= p.sum()
    out = np.empty(n_tokens, dtype=np.uint16 if vocab_size <= 1 << 16 else np.uint32)
    for i in range(0, n_tokens, CHUNK):
        out[i:i + CHUNK] = rng.choice(vocab_size, size=len(out[i:i + CHUNK]), p=p)
    return out


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(n_tokens: int, vocab_size: int, eval_tokens: int, seed: int = 0) -> dict:
    from lmlab.data.floors import compute_floors  # lmlab.data imports torch, which --help needs not
    from lmlab.data.tokens import Split

    rng = np.random.default_rng(seed)
    splits = {name: Split(name, zipf_stream(n, vocab_size, rng), n_docs=1, n_words=n, n_bytes=4 * n)
              for name, n in (("train", n_tokens), ("validation", eval_tokens), ("test", eval_tokens))}
    rss_before = _rss_bytes()
    tracemalloc.start()
    wall, cpu = time.perf_counter(), time.process_time()
    floors = compute_floors(splits, vocab_size)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    return {"tokens": n_tokens, "wall_s": wall, "cpu_s": cpu, "traced_bytes_per_token": traced_peak / n_tokens,
            "rss_bytes_per_token": rss_peak / n_tokens, "floor": floors["floor"],
            "test_loss": floors[floors["floor"]]["test_loss"]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m lmlab.data.floors_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=32_000_000, help="training tokens (default 32M)")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--eval-tokens", type=int, default=300_000,
                        help="validation and test tokens each (default 300K: WikiText-103's at BPE-8192)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = measure(args.tokens, args.vocab_size, args.eval_tokens, args.seed)
    print(f"{result['tokens']:,} training tokens, vocabulary {args.vocab_size}, {args.eval_tokens:,} validation "
          f"and test tokens each: {result['wall_s']:.1f} s wall, {result['cpu_s']:.1f} s CPU, peak "
          f"{result['traced_bytes_per_token']:.1f} bytes/token (tracemalloc), "
          f"{result['rss_bytes_per_token']:.1f} bytes/token (RSS); floor {result['floor']} "
          f"test loss {result['test_loss']:.4f}", flush=True)
    return result


if __name__ == "__main__":
    main()
