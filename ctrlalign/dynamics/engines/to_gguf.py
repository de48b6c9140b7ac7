r"""Write a ``transformers`` Llama model as a GGUF file that llama.cpp runs (float32, float16
or 8-bit ``Q8_0`` weights).

:class:`~ctrlalign.dynamics.engines.llamacpp.LlamaCppEngine` needs the model as GGUF. The
packaged models ship as GGUF already; this writer covers the rest of the Llama family in
``transformers`` (``model_type == "llama"``: untied or tied head, grouped-query attention,
default RoPE), chiefly the tiny random models of the tests, so the engine's exactness claims
can be checked against the torch forward pass on the very same float32 weights.

The file holds the weights (float32 by default), the architecture's hyperparameters, and a
vocabulary of V placeholder tokens (``tokenizer.ggml.model = "none"``): ctrlalign tokenises
with the ``transformers`` tokenizer and feeds llama.cpp token ids only.

Layout. For layer i the tensors are ``blk.i.{attn_norm, attn_q, attn_k, attn_v, attn_output,
ffn_norm, ffn_gate, ffn_up, ffn_down}.weight``, then ``token_embd``, ``output_norm`` and
``output`` (omitted for a tied head: llama.cpp then reads ``token_embd``). Linear weights
(out, in) are stored as they are. The query and key projections are reordered for llama.cpp's
RoPE: ``transformers`` rotates the pair (k, k + h/2) of each head (h = head dim), llama.cpp the
pair (2k, 2k + 1), so the rows of each head's (h, d) block go from order (half, k) to (k, half).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..._checks import ConfigError

__all__ = ["rope_interleave", "write_llama_gguf"]


def rope_interleave(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reorder a query or key projection (num_heads·h, d) from the half-split RoPE layout of
    ``transformers`` to llama.cpp's interleaved one: in each head, row ``half·h/2 + k`` moves to
    row ``2k + half`` (k < h/2, half ∈ {0, 1})."""
    rows, d = weight.shape
    h = rows // num_heads
    return weight.reshape(num_heads, 2, h // 2, d).transpose(1, 2).reshape(rows, d)


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    kind = params.get("rope_type", "default")
    if kind != "default":
        raise ConfigError(f"write_llama_gguf: RoPE type {kind!r} is not supported; only the default RoPE")
    return 10000.0 if theta is None else float(theta)


def write_llama_gguf(model: Any, path: str | Path, weights: str = "f32") -> Path:
    """Write ``model`` (a ``transformers`` ``LlamaForCausalLM``) to ``path`` as GGUF.

    Args:
        model: the Llama model (any device; its weights are read as float32 on the CPU).
        path: the file to write.
        weights: the 2-D weights' type: ``"f32"`` (exact), ``"f16"`` or ``"q8_0"`` (8-bit
            blocks of 32 with a float16 scale, llama.cpp's ``Q8_0``); norms stay float32.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: the model is not a Llama (``model_type``), uses attention or MLP biases,
            or a RoPE other than the default; or ``weights`` is none of the three.
    """
    import gguf  # the GGUF writer; installed with transformers' GGUF support
    from gguf import quants

    kinds = {"f32": (gguf.LlamaFileType.ALL_F32, None), "f16": (gguf.LlamaFileType.MOSTLY_F16, None),
             "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0)}
    if weights not in kinds:
        raise ConfigError(f"write_llama_gguf: weights must be one of {sorted(kinds)}, got {weights!r}")
    file_type, qtype = kinds[weights]

    cfg = model.config
    if getattr(cfg, "model_type", None) != "llama":
        raise ConfigError(f"write_llama_gguf writes Llama models only, got model_type {cfg.model_type!r}")
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise ConfigError("write_llama_gguf: attention_bias/mlp_bias Llama variants are not supported")
    d, heads = cfg.hidden_size, cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or d // heads
    theta = _rope_theta(cfg)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    vocab = state["model.embed_tokens.weight"].shape[0]

    path = Path(path)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(int(cfg.max_position_embeddings))
    writer.add_embedding_length(d)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(vocab)
    writer.add_file_type(file_type)
    writer.add_tokenizer_model("none")

    def put(name: str, t: torch.Tensor) -> None:
        a = t.contiguous().numpy()
        if a.ndim == 1 or weights == "f32":
            writer.add_tensor(name, a)
        elif qtype is None:
            writer.add_tensor(name, a.astype(np.float16))
        else:
            writer.add_tensor(name, quants.quantize(a, qtype), raw_dtype=qtype)

    put("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        put(f"blk.{i}.attn_norm.weight", state[p + "input_layernorm.weight"])
        put(f"blk.{i}.attn_q.weight", rope_interleave(state[p + "self_attn.q_proj.weight"], heads))
        put(f"blk.{i}.attn_k.weight", rope_interleave(state[p + "self_attn.k_proj.weight"], kv_heads))
        put(f"blk.{i}.attn_v.weight", state[p + "self_attn.v_proj.weight"])
        put(f"blk.{i}.attn_output.weight", state[p + "self_attn.o_proj.weight"])
        put(f"blk.{i}.ffn_norm.weight", state[p + "post_attention_layernorm.weight"])
        put(f"blk.{i}.ffn_gate.weight", state[p + "mlp.gate_proj.weight"])
        put(f"blk.{i}.ffn_up.weight", state[p + "mlp.up_proj.weight"])
        put(f"blk.{i}.ffn_down.weight", state[p + "mlp.down_proj.weight"])
    put("output_norm.weight", state["model.norm.weight"])
    if not getattr(cfg, "tie_word_embeddings", False):
        put("output.weight", state["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
