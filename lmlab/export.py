"""`python -m lmlab.export checkpoint=PATH out=DIR`: a checkpoint as a Hugging Face GPT-2 directory.

lmlab's model is GPT-2's layout (pre-LN blocks, fused qkv with bias, GELU with the tanh
approximation, LayerNorm eps 1e-5, learned absolute positions, tied output layer), so the export
is a renaming: `transformers.AutoModelForCausalLM.from_pretrained(DIR)` and
`AutoTokenizer.from_pretrained(DIR)` then load it offline, and `pipeline("text-generation",
model=DIR)` generates until EOS or a full context (generation_config.json: max_length =
n_positions). A checkpoint whose model GPT-2 cannot express exactly is refused with the reason,
never exported approximately; after renaming, the exported model's logits are checked against
lmlab's before anything is written.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import MISSING

from lmlab.cli import parse_key_values

if TYPE_CHECKING:  # torch and the tokenizer are imported where used, so --help answers without them
    import torch

    from lmlab.data.tokenizer import Tokenizer

# lmlab parameter name -> GPT2LMHeadModel's. lm_head.weight is tied to wte in both.
_RENAMES = [
    (r"wte\.weight", "transformer.wte.weight"),
    (r"wpe\.weight", "transformer.wpe.weight"),
    (r"blocks\.(\d+)\.ln1\.(weight|bias)", r"transformer.h.\1.ln_1.\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"transformer.h.\1.attn.c_attn.\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"transformer.h.\1.attn.c_proj.\2"),
    (r"blocks\.(\d+)\.ln2\.(weight|bias)", r"transformer.h.\1.ln_2.\2"),
    (r"blocks\.(\d+)\.mlp\.fc\.(weight|bias)", r"transformer.h.\1.mlp.c_fc.\2"),
    (r"blocks\.(\d+)\.mlp\.proj\.(weight|bias)", r"transformer.h.\1.mlp.c_proj.\2"),
    (r"ln_f\.(weight|bias)", r"transformer.ln_f.\1"),
    (r"lm_head\.weight", "lm_head.weight"),
]
# GPT-2's Conv1D stores its weight as (in, out), torch's Linear as (out, in).
_LINEAR_WEIGHT = re.compile(r"blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc|mlp\.proj)\.weight")
# Largest |logit difference| an fp32 export may show against lmlab on the check batch: the two
# compute the same function with different kernels, so only rounding separates them.
LOGITS_ATOL = 1e-4


class ExportError(ValueError):
    """The checkpoint cannot be exported exactly: the message says why."""


@dataclass
class ExportConfig:
    checkpoint: str = MISSING
    out: str = MISSING


def refusal(ckpt: dict) -> str | None:
    """Why the checkpoint's model is not exactly a GPT-2, or None when it is."""
    model_cfg = (ckpt.get("config") or {}).get("model", {})
    if model_cfg.get("doc_mask"):
        return ("it was trained with model.doc_mask=true (tokens never attend across an EOS); GPT-2 in "
                "transformers attends across documents, so it would score text differently")
    return None


def gpt2_config(model, eos_id: int):
    from transformers import GPT2Config

    c = model.cfg
    return GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.max_seq_len, n_embd=c.d_model, n_layer=c.n_layers,
        n_head=c.n_heads, n_inner=c.d_ff,
        activation_function="gelu_pytorch_tanh",  # F.gelu(approximate="tanh"), lmlab's own call
        layer_norm_epsilon=model.ln_f.eps, resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout,
        bos_token_id=eos_id, eos_token_id=eos_id, tie_word_embeddings=True, dtype="float32")


def generation_config(model, eos_id: int):
    """Generation stops when prompt and continuation fill the context: transformers' text-generation
    pipeline otherwise asks for 256 new tokens, and past n_positions GPT-2's position table has no
    row for the next one (an IndexError). A caller's own max_new_tokens takes precedence over this
    max_length in transformers: prompt plus max_new_tokens must then stay within n_positions."""
    from transformers import GenerationConfig

    return GenerationConfig(bos_token_id=eos_id, eos_token_id=eos_id, max_length=model.cfg.max_seq_len)


def gpt2_state_dict(model) -> dict[str, torch.Tensor]:
    """lmlab's weights under GPT-2's names. The embedding may carry padding rows beyond the
    vocabulary (for faster matmuls); only the real vocabulary's rows are exported."""
    vocab = model.cfg.vocab_size
    out, unknown = {}, []
    for name, tensor in model.state_dict().items():
        for pattern, target in _RENAMES:
            if re.fullmatch(pattern, name):
                if _LINEAR_WEIGHT.fullmatch(name):
                    tensor = tensor.t()
                if name in ("wte.weight", "lm_head.weight"):
                    tensor = tensor[:vocab]
                out[re.sub(pattern, target, name)] = tensor.contiguous()
                break
        else:
            unknown.append(name)
    if unknown:
        raise ExportError(f"the model has parameters GPT-2 has no place for: {', '.join(unknown)}")
    return out


def _gpt2_backend(encoding):
    """tiktoken's GPT-2 encoding as a `tokenizers` BPE, through transformers' own converter."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from lmlab.data.tokenizer import EOS

    class FromEncoding(TikTokenConverter):
        def load_tiktoken_bpe(self, _url):  # the ranks are in memory already, no file to read
            return encoding._mergeable_ranks

    return FromEncoding(pattern=encoding._pat_str, extra_special_tokens=[EOS]).converted()


def fast_tokenizer(tokenizer: Tokenizer, max_length: int):
    """The run's tokenizer as a transformers fast tokenizer, EOS its only special token (GPT-2's
    convention: it is also BOS, so lm-evaluation-harness starts each document with it, as lmlab
    training does)."""
    from tokenizers import Tokenizer as Backend
    from transformers import PreTrainedTokenizerFast

    from lmlab.data.tokenizer import EOS

    if tokenizer.ref["kind"] == "bpe":
        backend = Backend.from_str(tokenizer.ref["json"])
    else:
        backend = _gpt2_backend(tokenizer._tt)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                                   model_max_length=max_length)


def check_logits(model, hf_model) -> float:
    """Max |logit difference| on one fixed batch of token ids; raises when beyond LOGITS_ATOL."""
    import torch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.cfg.vocab_size, (2, model.cfg.max_seq_len), generator=generator)
    with torch.no_grad():
        diff = (model(ids).float() - hf_model(ids).logits.float()).abs().max().item()
    if not diff <= LOGITS_ATOL:
        raise ExportError(f"the converted model's logits differ from lmlab's by up to {diff:.3g} "
                          f"(tolerance {LOGITS_ATOL}); nothing was written")
    return diff


def export(checkpoint: str | Path, out: str | Path) -> Path:
    """Write `out` (config.json, generation_config.json, model.safetensors, tokenizer files)."""
    from lmlab.checkpoint import load_model

    return export_loaded(*load_model(checkpoint), out, checkpoint)


def export_loaded(model, tokenizer: Tokenizer, ckpt: dict, out: str | Path, checkpoint: str | Path) -> Path:
    """`export` of a checkpoint already loaded by `load_model`."""
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        raise ExportError("exporting needs transformers and safetensors: pip install -c constraints-cpu.txt "
                          "-e '.[hf]'") from None

    reason = refusal(ckpt)
    if reason:
        raise ExportError(f"cannot export {checkpoint}: {reason}")
    hf_model = GPT2LMHeadModel(gpt2_config(model, tokenizer.eos_id))
    hf_model.generation_config = generation_config(model, tokenizer.eos_id)
    hf_model.load_state_dict(gpt2_state_dict(model), strict=True)
    hf_model.eval()
    check_logits(model, hf_model)
    out = Path(out)
    hf_model.save_pretrained(out)  # safetensors, GPT-2's names, the tied lm_head stored once
    fast_tokenizer(tokenizer, model.cfg.max_seq_len).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    from lmlab.errors import exit_bad_input

    try:  # --help answers here, before torch loads
        cfg = parse_key_values(ExportConfig, sys.argv[1:] if argv is None else argv, verbatim=("checkpoint", "out"),
                               doc=__doc__)
    except ValueError as e:
        exit_bad_input(e, "lmlab.export")
    from lmlab.checkpoint import CheckpointError

    try:
        out = export(cfg.checkpoint, cfg.out)
    except (ValueError, CheckpointError, OSError) as e:
        exit_bad_input(e, "lmlab.export")
    print(f"exported {cfg.checkpoint} to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
