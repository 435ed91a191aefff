"""Cross-entropy from the final hidden states, without the whole (tokens, vocabulary) logits.

The dense loss (`train.loss=dense`) writes the fp32 logits of every token, then their
log-softmax, then their gradient: 67 MB each for 8 x 256 tokens and 8,192 entries, 3.3 GB each
for 64 x 256 tokens and GPT-2's 50,304. `chunked_cross_entropy` holds one chunk of tokens' logits
at a time. Like Liger-Kernel's fused linear cross-entropy, it computes the gradients in the
forward pass while a chunk's logits are at hand, so the head costs the dense loss's three matmuls
and not a fourth to recompute them; the backward only scales them by the incoming gradient.

`liger` and `cce` are the same loss from Liger-Kernel and Apple's cut-cross-entropy (Triton
kernels, CUDA only), where installed. Every loss here takes the head's whole padded weight and
scores the real vocabulary only: padded entries get no probability and no gradient.
"""
from __future__ import annotations

import torch

# Tokens per chunk: 512 hold 103 MB of fp32 logits at GPT-2's 50,304 entries (64 x 256 tokens'
# dense logits are 3.3 GB). Larger chunks run faster: on 2 CPU cores the head of 2,048 tokens at
# vocabulary 8,192 took 5.17 / 3.54 / 3.37 / 2.72 s in chunks of 256 / 512 / 1,024 / 2,048
# (dense: 2.78 s). Not yet measured on a GPU (docs/speed.md).
CHUNK_TOKENS = 512


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype autocast would give the head's matmul, as the dense loss's `lm_head` gets it."""
    device = t.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else t.dtype


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """(hidden (N, d), weight (V_padded, d), targets (N,)) -> (summed loss, per-token losses).
    Targets equal to `ignore_index` score 0 and give no gradient; entries from `n_vocab` on are
    -inf. Only the sum has a gradient: that of the sum, computed in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, n_vocab: int, ignore_index: int, chunk: int):
        dtype, n = compute_dtype(hidden), len(targets)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        losses = torch.empty(n, dtype=torch.float32, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            for start in range(0, n, chunk):
                part = slice(start, start + chunk)
                logits = (h[part] @ w.T).float()
                logits[:, n_vocab:] = float("-inf")
                log_probs = logits.log_softmax(dim=1)
                scored = targets[part] != ignore_index
                target = targets[part].where(scored, 0)[:, None]
                losses[part] = -log_probs.gather(1, target)[:, 0].where(scored, 0.0)
                if grad_hidden is None and grad_weight is None:
                    continue
                # d(loss)/d(logits) = softmax - one-hot, zero on unscored rows
                minus_one = torch.full_like(target, -1.0, dtype=torch.float32)
                grad_logits = log_probs.exp_().scatter_add_(1, target, minus_one).mul_(scored[:, None]).to(dtype)
                if grad_hidden is not None:
                    grad_hidden[part] = grad_logits @ w
                if grad_weight is not None:
                    grad_weight += (grad_logits.T @ h[part]).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(losses)
        return losses.sum(), losses

    @staticmethod
    def backward(ctx, grad_total, _):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (None if grad_hidden is None else grad_hidden * grad_total,
                None if grad_weight is None else (grad_weight * grad_total).to(ctx.weight_dtype),
                None, None, None, None)


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, n_vocab: int,
                          ignore_index: int = -100, reduction: str = "mean",
                          chunk: int = CHUNK_TOKENS) -> torch.Tensor:
    """F.cross_entropy(hidden @ weight.T with entries from n_vocab on at -inf, targets), to fp32
    rounding, one chunk of `chunk` tokens at a time. reduction='none' has no gradient."""
    if reduction == "none" and torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        raise ValueError("the chunked loss differentiates only its sum or mean; use reduction='sum' or 'mean'")
    total, losses = ChunkedLinearCrossEntropy.apply(hidden, weight, targets, n_vocab, ignore_index, chunk)
    if reduction == "none":
        return losses
    return total if reduction == "sum" else total / (targets != ignore_index).sum()


def liger_cross_entropy(hidden, weight, targets, n_vocab: int, ignore_index: int = -100, reduction: str = "mean"):
    """Liger-Kernel's fused linear cross-entropy over the real vocabulary's rows."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    return LigerFusedLinearCrossEntropyLoss(ignore_index=ignore_index, reduction=reduction)(
        weight[:n_vocab], hidden, targets)


def cce_cross_entropy(hidden, weight, targets, n_vocab: int, ignore_index: int = -100, reduction: str = "mean"):
    """cut-cross-entropy over the real vocabulary's rows, with its gradient filter off: exact."""
    from cut_cross_entropy import linear_cross_entropy

    return linear_cross_entropy(hidden, weight[:n_vocab], targets, ignore_index=ignore_index, reduction=reduction,
                                filter_eps=None)


HEAD_LOSSES = {"chunked": chunked_cross_entropy, "liger": liger_cross_entropy, "cce": cce_cross_entropy}
