"""The baseline `python -m lmlab.bench bench.compare=hf` compares with: Hugging Face transformers'
GPT-2 with a plain AdamW loop, what a user would otherwise reach for. Run by the bench in a fresh
process, on the same shapes, threads and machine; prints one JSON line with tokens_per_s (warm-up
excluded).

  python -m lmlab.hf_baseline --device cpu --n-layer 4 --n-head 4 --d-model 256 --d-ff 512 \\
      --seq 256 --batch 8 --vocab 8192 --steps 20 --warmup 3 [--precision bf16] [--threads 2] [--compile]

Needs transformers (`pip install lmlab[hf]`).
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lmlab.hf_baseline", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--d-ff", type=int, default=1024)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                   help="bf16 autocast or fp32; default: bf16 on CUDA, fp32 on the CPU (the usual loop's choice)")
    p.add_argument("--threads", type=int, default=None, help="torch's CPU threads (default: torch's)")
    p.add_argument("--compile", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    a = parse(argv)
    from transformers import GPT2Config, GPT2LMHeadModel

    if a.threads:
        torch.set_num_threads(a.threads)
    cuda = a.device.startswith("cuda")
    precision = a.precision or ("bf16" if cuda else "fp32")
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=a.vocab, n_positions=a.seq, n_embd=a.d_model, n_layer=a.n_layer, n_head=a.n_head,
                     n_inner=a.d_ff, bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).to(a.device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=cuda)

    def loss_fn(x):
        return model(input_ids=x, labels=x).loss

    if a.compile:
        loss_fn = torch.compile(loss_fn)
    x = torch.randint(0, a.vocab, (a.batch, a.seq), device=a.device)
    device_type = "cuda" if cuda else "cpu"

    def step() -> None:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(a.warmup):
        step()
    sync()
    started = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync()
    dt = (time.perf_counter() - started) / a.steps
    out = {"impl": "hf-gpt2" + ("-compiled" if a.compile else ""), "device": a.device, "precision": precision,
           "params": sum(p.numel() for p in model.parameters()), "tokens_per_s": a.batch * a.seq / dt,
           "step_ms": dt * 1e3, "threads": torch.get_num_threads(), "torch": torch.__version__}
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
