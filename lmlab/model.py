"""A decoder-only GPT. Imports torch only: it knows nothing of data, config files or the loop."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int = 512
    max_seq_len: int = 256
    dropout: float = 0.0
    # Embedding rows are padded to a multiple of this: GPU matmuls over 50,304 rows run faster than
    # over GPT-2's 50,257. The padded rows are never a token and never get probability (see forward).
    vocab_multiple: int = 64

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple


KVCache = list  # one (k, v) pair per layer, grown by generation


def attention_mask(pad_mask: torch.Tensor | None, segments: torch.Tensor | None, T: int,
                   device: torch.device) -> torch.Tensor | None:
    """Boolean (B, 1, T, T) mask, True = may attend; None when plain causal attention suffices.

    pad_mask (B, T) is True on real tokens; segments (B, T) numbers the document of each token.
    Every query may always attend to itself, so a fully padded row never softmaxes over nothing
    (which is NaN); real queries still put exactly zero weight on padded keys.
    """
    if pad_mask is None and segments is None:
        return None
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    mask = causal[None, None]
    if pad_mask is not None:
        mask = mask & pad_mask[:, None, None, :]
    if segments is not None:
        mask = mask & (segments[:, None, :, None] == segments[:, None, None, :])
    return mask | torch.eye(T, dtype=torch.bool, device=device)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, mask=None, cache=None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            if cache[0] is not None:
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            cache[0], cache[1] = k, v
        p = self.dropout if self.training else 0.0
        if mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        else:
            # One new query against a cache sees every cached key; otherwise q and k align.
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=q.size(2) > 1)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x, mask=None, cache=None):
        x = x + self.attn(self.ln1(x), mask, cache)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.d_model % cfg.n_heads:
            raise ValueError(f"d_model={cfg.d_model} is not divisible by n_heads={cfg.n_heads}")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: saves V*d parameters, GPT-2 does the same
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layers) so the residual stream's
        # variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))
        # Zero rows appended after the init, so the same seed gives the same model with or without them.
        pad = cfg.padded_vocab_size - cfg.vocab_size
        if pad:
            zeros = self.wte.weight.new_zeros(pad, cfg.d_model)
            self.wte.weight = nn.Parameter(torch.cat([self.wte.weight.detach(), zeros]))
            self.lm_head.weight = self.wte.weight
            self.wte.num_embeddings = self.lm_head.out_features = cfg.padded_vocab_size
        self.register_buffer("padded_entries", torch.arange(cfg.padded_vocab_size) >= cfg.vocab_size, persistent=False)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def n_params(self, non_embedding: bool = False) -> int:
        """Unique parameters, padded embedding rows not counted; non_embedding drops token and
        position embeddings (Kaplan et al.)."""
        n = sum(p.numel() for p in self.parameters())
        n -= (self.cfg.padded_vocab_size - self.cfg.vocab_size) * self.cfg.d_model
        if non_embedding:
            n -= self.cfg.vocab_size * self.cfg.d_model + self.wpe.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, pad_mask: torch.Tensor | None = None,
                segments: torch.Tensor | None = None, cache: KVCache | None = None,
                padded_vocab: bool = False, return_hidden: bool = False) -> torch.Tensor:
        """Logits (B, T, vocab_size), so sampling and every other reader only ever see the real
        vocabulary. `padded_vocab=True` keeps the padded width with -inf in the padded entries (no
        probability, no gradient), which is what the loss takes: with the width sliced off, the
        compiled loss read unaligned rows and zero-filled a full copy for the backward, 3.9 of the
        small model's 7.7 ms of GPU time per step on an H200. `return_hidden=True` returns the
        final hidden states (B, T, d_model) instead, the head's input (`lm_head.weight`, padded
        rows included), for a loss that never holds all the logits at once. With a cache, idx
        continues the cached sequence."""
        B, T = idx.shape
        start = 0 if cache is None or cache[0][0] is None else cache[0][0].size(2)
        if start + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len={self.cfg.max_seq_len}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        mask = attention_mask(pad_mask, segments, T, idx.device)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, None if cache is None else cache[i])
        x = self.ln_f(x)
        if return_hidden:
            return x
        logits = self.lm_head(x)
        if self.cfg.padded_vocab_size == self.cfg.vocab_size:
            return logits
        if padded_vocab:
            return logits.masked_fill(self.padded_entries, float("-inf"))
        return logits[..., :self.cfg.vocab_size]

    def new_cache(self) -> KVCache:
        return [[None, None] for _ in self.blocks]
