"""One training step: the optimizer, the batches' way to the device and the loss (what it runs on
is the run's `Runtime`, lmlab/runtime.py).

`TrainStep` is the only code that trains: the loop in train.py and `python -m lmlab.bench` both
call it, so what the bench times is what a run does. A step never waits for the device: the loss
comes back as a device tensor, the caller reads it every `train.log_every` steps, and meanwhile
the host collates and copies the next batch while the device still works on this one.
"""
from __future__ import annotations

import ctypes
import os
import sys
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from lmlab.data import IGNORE, Sampler, collate, scored_targets, with_seed_bugs
from lmlab.distributed import Ranks, data_parallel, no_sync
from lmlab.loss import HEAD_LOSSES
from lmlab.model import GPT
from lmlab.runtime import Runtime


def make_deterministic() -> None:
    """Deterministic kernels everywhere (train.deterministic), cuBLAS included: its workspace
    setting must be in place before its first matmul, which is why the TrainStep sets it."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def keep_freed_host_memory() -> None:
    """glibc returns every block over 32 MB to the kernel when freed, so each step's (batch, seq,
    vocab) logits and their gradients land on fresh pages and fault them in: measured on 2 cores,
    a 64 MB torch.zeros took 18 ms this way and 0.8 ms from reused heap memory, and the small
    model's step ran 20% faster (4.85k -> 5.83k tokens/s). Keep freed memory for reuse instead."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl): nothing to tune
        return
    m_trim_threshold, m_mmap_max = -1, -4
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 1 << 30)


def make_optimizer(model: GPT, tcfg, fused: bool) -> torch.optim.AdamW:
    """AdamW; weight decay only on matrices inside blocks, never on biases, norms or embeddings."""
    embeddings = {id(model.wte.weight), id(model.wpe.weight)}
    decay = [p for p in model.parameters() if p.dim() >= 2 and id(p) not in embeddings]
    no_decay = [p for p in model.parameters() if p.dim() < 2 or id(p) in embeddings]
    groups = [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=0.0, betas=(tcfg.beta1, tcfg.beta2), fused=fused)


def to_device(batch: dict, device) -> dict:
    """A batch from `collate` on the device. On CUDA it goes through pinned memory with a
    non-blocking copy, queued behind the work already on the device instead of waiting for it.
    A pad mask with nothing padded is dropped, so attention takes the plain causal kernel."""
    cuda = torch.device(device).type == "cuda"
    return {key: (t.pin_memory() if cuda else t).to(device, non_blocking=cuda) for key, t in batch.items()
            if not (key == "pad_mask" and bool(t.all()))}


def device_batches(tokens, sampler: Sampler, count: int, eos_id: int, segments: bool, device: torch.device,
                   ranks: Ranks = Ranks(), bugs=None) -> tuple[list[tuple[dict, int]], int]:
    """The next `count` micro-batches: for each, this rank's share of the sampler's global rows on
    the device, with the seed's bugs that `bugs` turns on (see `with_seed_bugs`), and the number of
    targets the whole global micro-batch scores (summed over the step: the loss's denominator);
    and the step's total of real targets, counted on the host from the rows alone, so every arm
    stops at the same data.

    Every rank draws the same global rows (same seed, same position) and keeps its contiguous
    part, so the data and the sampler's position do not depend on the number of processes."""
    batches, n_targets = [], 0
    for _ in range(count):
        rows = sampler.next_rows()
        share = len(rows) // ranks.world
        shares = [rows[rank * share:(rank + 1) * share] for rank in range(ranks.world)]
        batch = with_seed_bugs(collate(tokens, shares[ranks.rank], eos_id, segments), bugs, eos_id)
        scored = scored_targets(rows)
        if bugs is not None and (bugs.drop_eos_targets or bugs.no_pad_mask):
            # The seed's loss was a mean over the targets its bug left (fewer without EOS, the
            # padding too without the mask): every rank's share counts them as it trains on it.
            loss_targets = sum(int((with_seed_bugs(collate(tokens, rows, eos_id), bugs, eos_id)["y"] != IGNORE).sum())
                               for rows in shares)
        else:
            loss_targets = scored
        batches.append((to_device(batch, device), loss_targets))
        n_targets += scored
    return batches, n_targets


def resolve_loss(setting: str, device: torch.device) -> str:
    """train.loss: `auto` is the dense loss. On 2 CPU cores the chunked one ran the small model's
    step (vocabulary 8192, 8 x 256) slower (docs/speed.md: its many small ops per chunk against one
    large matmul each way); on CUDA it is not measured yet."""
    return "dense" if setting == "auto" else setting


def forward_loss(model, x, y, pad_mask=None, segments=None, reduction: str = "mean",
                 loss: str = "dense") -> torch.Tensor:
    """Cross-entropy of a device batch; pad and unscored targets (IGNORE) count for nothing, and so
    do padded vocabulary entries (-inf). `loss` is a resolved train.loss: `dense` takes the model's
    logits (under torch.compile the fp32 upcast and the -inf fuse into the loss kernels instead of
    copying them); the others take its final hidden states and head weight (lmlab/loss.py)."""
    if loss == "dense":
        logits = model(x, pad_mask=pad_mask, segments=segments, padded_vocab=True)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction=reduction)
    hidden = model(x, pad_mask=pad_mask, segments=segments, return_hidden=True)
    gpt = getattr(model, "module", model)  # under DDP the model runs wrapped, so its gradients are synced
    return HEAD_LOSSES[loss](hidden.flatten(0, 1), gpt.lm_head.weight, y.flatten(), gpt.cfg.vocab_size,
                             ignore_index=IGNORE, reduction=reduction)


def loss_function(runtime: Runtime):
    """`forward_loss`, compiled where the runtime says so. Training and evaluation share the
    compiled code (torch.compile caches it per function), each with its own graphs."""
    return torch.compile(forward_loss, mode=runtime.compile_mode) if runtime.compiled else forward_loss


def batch_loss(model, batch: dict, device, reduction: str = "mean", loss: str = "auto") -> torch.Tensor:
    """`forward_loss` of a host batch from `collate`, with train.loss `loss`."""
    device = torch.device(device)
    return forward_loss(model, **to_device(batch, device), reduction=reduction, loss=resolve_loss(loss, device))


class TrainStep:
    """One optimizer step: forward and backward over the micro-batches, clip, AdamW, zero the
    gradients. Each micro-batch's loss is its summed cross-entropy over the target count of the
    whole step (every micro-batch, every rank), so every scored target weighs the same and the
    gradient is the full batch's, however it is split into micro-batches and processes; a mean of
    the micro-batches' means would weigh a short document's targets more where rows are unpacked.
    Under DDP only the last micro-batch all-reduces."""

    def __init__(self, model: GPT, optimizer: torch.optim.Optimizer, runtime: Runtime, tcfg,
                 ranks: Ranks = Ranks()):
        self.model, self.optimizer, self.runtime, self.tcfg, self.ranks = model, optimizer, runtime, tcfg, ranks
        self.device, self.compiled = runtime.device, runtime.compiled
        self.module = data_parallel(model, ranks, self.device)
        self.loss = resolve_loss(tcfg.loss, self.device)
        self.loss_fn = loss_function(runtime)
        if tcfg.deterministic:
            make_deterministic()
        if self.device.type == "cpu":
            keep_freed_host_memory()

    def __call__(self, micro_batches: list[tuple[dict, int]], lr: float) -> torch.Tensor:
        """Train on `micro_batches` (see `device_batches`) at learning rate `lr`; returns this
        rank's share of their mean loss (the sum over ranks is the loss) as a device tensor,
        without waiting for it."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        step_targets = sum(n_targets for _, n_targets in micro_batches)
        for i, (batch, _) in enumerate(micro_batches):
            with nullcontext() if i == len(micro_batches) - 1 else no_sync(self.module):
                with self.runtime.context():
                    share = self.loss_fn(self.module, **batch, reduction="sum", loss=self.loss) / step_targets
                # DDP averages gradients over the ranks; the shares are to be summed.
                (share * self.ranks.world).backward()
            total += share.detach()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tcfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total
