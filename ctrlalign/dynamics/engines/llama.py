r"""The forward pass of a Llama-family decoder over its own weights, for the static engine.

What :class:`~ctrlalign.dynamics.engines.static.StaticEngine` computes, without its buffers,
sessions or CUDA graphs: the weights of a Hugging Face ``LlamaForCausalLM`` /
``Qwen2ForCausalLM`` / ``MistralForCausalLM`` read in place (:class:`DecoderWeights`, one
:class:`LayerWeights` per layer, Q/K/V and gate/up optionally fused into one GEMM each by
:func:`fuse_linears`), and the model math: RMSNorm, RoPE (the cos/sin table from the module's
own rotary embedding, so any ``rope_scaling`` it implements is reproduced), GQA attention split
into a *prefix* part (the n·g queries of prompt j against prompt j's K/V, no copy) and a
*decode* part sharing one softmax, and the SwiGLU MLP. :meth:`DecoderWeights.prefill` runs D
prompts; :meth:`DecoderWeights.decode_step` runs one token for B = D·n rows against given
caches. :class:`Kernels` holds the elementwise pieces, ``torch.compile``'d when asked.

Shapes: D prompts, n samples, B = D·n, P padded prompt length, T new tokens, d hidden size,
L layers, H query heads, Hkv key/value heads, g = H/Hkv, hd head dim, I MLP width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..decoding import sample_with_logprobs

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "DecoderWeights",
    "Kernels",
    "LayerWeights",
    "add_norm",
    "attn_merge",
    "attn_probs",
    "check_supported",
    "fuse_linears",
    "linear",
    "masked_softmax",
    "norm_eps",
    "qkv_rope",
    "rms_norm",
    "rope",
    "rotate_half",
    "swiglu",
]

#: ``config.model_type`` values this forward pass reproduces.
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")


class LayerWeights:
    """References to one decoder layer's weights.

    With ``fuse=True`` the Q/K/V projections are one (H·hd + 2·Hkv·hd, d) weight and gate/up
    one (2·I, d) weight (see :func:`fuse_linears`): a decode step then makes 2 GEMMs instead of
    5 for them. With ``fuse=False`` they are the module's own weights, used separately.
    """

    def __init__(self, layer: torch.nn.Module, fuse: bool) -> None:
        a, m = layer.self_attn, layer.mlp
        self.ln1_w, self.ln1_eps = layer.input_layernorm.weight, norm_eps(layer.input_layernorm)
        self.ln2_w, self.ln2_eps = layer.post_attention_layernorm.weight, norm_eps(layer.post_attention_layernorm)
        self.fused = fuse
        if fuse:
            self.qkv = fuse_linears(a, "_ctrlalign_qkv", (a.q_proj, a.k_proj, a.v_proj))
            self.gate_up = fuse_linears(m, "_ctrlalign_gate_up", (m.gate_proj, m.up_proj))
        else:
            self.q = (a.q_proj.weight, a.q_proj.bias)
            self.k = (a.k_proj.weight, a.k_proj.bias)
            self.v = (a.v_proj.weight, a.v_proj.bias)
            self.gate = (m.gate_proj.weight, m.gate_proj.bias)
            self.up = (m.up_proj.weight, m.up_proj.bias)
        self.o = (a.o_proj.weight, a.o_proj.bias)
        self.down = (m.down_proj.weight, m.down_proj.bias)

    def project_qkv(self, h: torch.Tensor, nq: int, nkv: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(…, d) → q (…, nq), k (…, nkv), v (…, nkv) (views of one GEMM's output when fused)."""
        if self.fused:
            qkv = linear(h, self.qkv)
            return qkv[..., :nq], qkv[..., nq:nq + nkv], qkv[..., nq + nkv:]
        return linear(h, self.q), linear(h, self.k), linear(h, self.v)

    def project_gate_up(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(…, d) → gate (…, I), up (…, I) (views of one GEMM's output when fused)."""
        if self.fused:
            return linear(h, self.gate_up).chunk(2, dim=-1)
        return linear(h, self.gate), linear(h, self.up)


def fuse_linears(owner: torch.nn.Module, attr: str, linears: Sequence[torch.nn.Module]):
    """One weight (and bias) whose row blocks are ``linears``' weights, without extra memory.

    The rows of the linears are concatenated into one tensor W = [W_1; W_2; …] (and b likewise;
    a missing bias is a zero block), and each linear's parameters are re-pointed to the
    matching row-block *view* of W, so the HF module keeps computing exactly what it did while
    the old storage is freed. The result is cached on ``owner`` under ``attr`` and reused as long
    as the parameters still point into it (a second engine on the same model fuses nothing).
    """
    ws = [l.weight for l in linears]
    bs = [getattr(l, "bias", None) for l in linears]
    cached = getattr(owner, attr, None)
    if cached is not None:
        W, b = cached
        off, ok = 0, True
        for w, bias in zip(ws, bs):
            r = w.shape[0]
            ok &= w.data_ptr() == W[off].data_ptr() and w.shape == W[off:off + r].shape
            if bias is not None:
                ok &= b is not None and bias.data_ptr() == b[off].data_ptr()
            off += r
        if ok and off == W.shape[0]:
            return W, b
    with torch.no_grad():
        W = torch.cat([w.detach() for w in ws], dim=0)
        b = None
        if any(x is not None for x in bs):
            b = torch.cat([x.detach() if x is not None else w.new_zeros(w.shape[0]) for x, w in zip(bs, ws)])
        off = 0
        for l, w, bias in zip(linears, ws, bs):
            r = w.shape[0]
            w.data = W[off:off + r]
            if bias is not None:
                bias.data = b[off:off + r]
            off += r
    setattr(owner, attr, (W, b))
    return W, b


def norm_eps(norm: torch.nn.Module) -> float:
    """The ε of an RMSNorm module (``variance_epsilon`` or ``eps``)."""
    for name in ("variance_epsilon", "eps"):
        if hasattr(norm, name):
            return float(getattr(norm, name))
    raise NotImplementedError(f"cannot read epsilon of {type(norm).__name__}")


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    r"""RMSNorm of x (…, d) with weight w (d,): :math:`w \odot x / \sqrt{\overline{x^2} + \varepsilon}`, in float32."""
    # identical to LlamaRMSNorm / Qwen2RMSNorm
    dt = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(dt)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(…, hd) → (−x₂, x₁) for the halves x₁, x₂ of the last dimension (RoPE's rotation)."""
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope(q, k, cos, sin):
    """Rotary position embedding applied to q and k: x·cos + rotate_half(x)·sin (cos/sin broadcast)."""
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def swiglu(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """SwiGLU: silu(g) · u, both (…, I)."""
    return F.silu(g) * u


def qkv_rope(q, k, v, cos, sin, D: int, n: int, Hkv: int, g: int, hd: int):
    """Rotate q, k and lay the B = D·n queries out for both attention parts.

    q (B, H·hd), k, v (B, Hkv·hd), cos/sin (B, 1, hd) →
    qp (D, Hkv, n·g, hd) for the prefix part (the n·g queries of prompt j per KV head),
    qd (B, Hkv, g, hd) for the decode part, k, v (B, Hkv, hd).
    """
    B = D * n
    q = q.reshape(B, Hkv * g, hd)
    k = k.reshape(B, Hkv, hd)
    q, k = rope(q, k, cos, sin)
    qp = q.view(D, n, Hkv, g, hd).permute(0, 2, 1, 3, 4).reshape(D, Hkv, n * g, hd)
    return qp, q.view(B, Hkv, g, hd), k, v.reshape(B, Hkv, hd)


def attn_probs(sp, sd, mask, scale: float, dtype: torch.dtype, D: int, n: int):
    """One softmax over the prefix and decode scores.

    sp (D, Hkv, n·g, P) prefix scores, sd (B, Hkv, g, Tb) decode scores, mask (B, 1, 1, P+Tb)
    → pp (D, Hkv, n·g, P), pd (B, Hkv, g, Tb) probabilities in ``dtype``.
    """
    _, Hkv, ng, P = sp.shape
    g = ng // n
    sp = sp.view(D, Hkv, n, g, P).permute(0, 2, 1, 3, 4).reshape(D * n, Hkv, g, P)
    pr = masked_softmax(torch.cat([sp, sd], dim=-1), mask, scale, dtype)
    pp = pr[..., :P].reshape(D, n, Hkv, g, P).permute(0, 2, 1, 3, 4).reshape(D, Hkv, n * g, P)
    return pp, pr[..., P:]


def attn_merge(op, od, n: int):
    """op (D, Hkv, n·g, hd) prefix part + od (B, Hkv, g, hd) decode part → (B, H·hd)."""
    D, Hkv, ng, hd = op.shape
    g = ng // n
    return op.view(D, Hkv, n, g, hd).permute(0, 2, 1, 3, 4).reshape(D * n, Hkv * g * hd) + od.reshape(D * n, Hkv * g * hd)


def masked_softmax(sc: torch.Tensor, mask: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """softmax(sc·scale) over the last dimension in float32, −∞ where ``mask`` is False, cast to ``dtype``."""
    return torch.softmax((sc * scale).float().masked_fill(~mask, float("-inf")), dim=-1).to(dtype)


def add_norm(x: torch.Tensor, o: torch.Tensor, w: torch.Tensor, eps: float):
    """Residual add then RMSNorm: returns (x + o, rms_norm(x + o, w, eps))."""
    x = x + o
    return x, rms_norm(x, w, eps)


class Kernels:
    """The elementwise pieces of a decode step; torch.compile'd (fused) in 'cudagraph' mode."""

    def __init__(self, compiled: bool) -> None:
        self.compiled = compiled
        if compiled:  # one compiled variant per decode shape (B, P, T): allow many
            import torch._dynamo

            for name in ("recompile_limit", "cache_size_limit"):
                if hasattr(torch._dynamo.config, name):
                    setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 256))
        wrap = (lambda f: torch.compile(f, fullgraph=True, dynamic=False)) if compiled else (lambda f: f)
        self.rms_norm = wrap(rms_norm)
        self.qkv_rope = wrap(qkv_rope)
        self.attn_probs = wrap(attn_probs)
        self.attn_merge = wrap(attn_merge)
        self.swiglu = wrap(swiglu)
        self.add_norm = wrap(add_norm)
        self.sample = wrap(sample_with_logprobs)


def linear(x: torch.Tensor, wb: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
    """x Wᵀ + b for a (weight (out, in), bias (out,) or None) pair."""
    return F.linear(x, wb[0], wb[1])


def check_supported(model: torch.nn.Module, max_length: int) -> None:
    """Refuse a model this forward pass does not reproduce.

    Raises:
        NotImplementedError: ``model.config.model_type`` is not one of
            :data:`SUPPORTED_MODEL_TYPES`, or the model uses a sliding window shorter than
            ``max_length`` or QK-norm attention.
    """
    cfg = model.config
    mt = getattr(cfg, "model_type", type(model).__name__)
    if mt not in SUPPORTED_MODEL_TYPES:
        raise NotImplementedError(
            f"StaticEngine supports model types {SUPPORTED_MODEL_TYPES}; got {mt!r} "
            f"({type(model).__name__}). Use the eager CausalLM engine for this architecture."
        )
    sw = getattr(cfg, "sliding_window", None)
    if mt != "llama" and sw is not None and getattr(cfg, "use_sliding_window", mt == "mistral") and sw < max_length:
        raise NotImplementedError(f"{type(model).__name__} with sliding_window={sw} < max_length is not supported")
    if hasattr(model.model.layers[0].self_attn, "q_norm"):
        raise NotImplementedError(f"{type(model).__name__}: QK-norm attention is not supported")


class DecoderWeights:
    """The weights of a Llama-family causal LM, read in place, and its forward pass.

    Args:
        model: a ``LlamaForCausalLM``-style module (``model.model.layers``, ``model.model.norm``,
            ``model.model.embed_tokens``, ``model.model.rotary_emb``).
        fuse: fuse each layer's Q/K/V and gate/up weights (:func:`fuse_linears`).
        max_length: the largest P + T the caller will use (a sliding window shorter than it is
            refused).

    Raises:
        NotImplementedError: the architecture is not one of :data:`SUPPORTED_MODEL_TYPES`, or it
            uses a feature this forward pass does not reproduce (sliding window, QK-norm, ...).
    """

    def __init__(self, model: torch.nn.Module, *, fuse: bool, max_length: int) -> None:
        check_supported(model, max_length)
        cfg = model.config
        inner = model.model
        a0 = inner.layers[0].self_attn
        self.num_layers = len(inner.layers)
        self.hidden_size = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = getattr(cfg, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(a0, "head_dim", None) or cfg.hidden_size // self.num_heads
        self.scale = self.head_dim ** -0.5
        self.group = self.num_heads // self.num_kv_heads
        self.embed = inner.embed_tokens.weight
        self.layers = [LayerWeights(l, fuse=fuse) for l in inner.layers]
        self.norm_w, self.norm_eps = inner.norm.weight, norm_eps(inner.norm)
        self.rotary = inner.rotary_emb

    @torch.no_grad()
    def rope_table(self, length: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (length, hd) of positions 0..length−1, from the module's own rotary embedding."""
        pos = torch.arange(length, device=device)[None]
        dummy = torch.zeros(1, dtype=dtype, device=device)
        cos, sin = self.rotary(dummy, pos)
        return cos[0].contiguous(), sin[0].contiguous()

    def mlp(self, h: torch.Tensor, ly: LayerWeights) -> torch.Tensor:
        """SwiGLU MLP of one layer: (…, d) → (…, d)."""
        return linear(swiglu(*ly.project_gate_up(h)), ly.down)

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                chunk: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run D left-padded prompts, ``chunk`` prompts per forward.

        Args:
            ids: (D, P) token ids.
            mask: (D, P) bool, True at real tokens (left padding).
            cos: (max_length, hd) cosine table (:meth:`rope_table`).
            sin: (max_length, hd) sine table.
            chunk: prompts per forward (bounds activation memory).
            dtype: the compute dtype.

        Returns:
            k, v (L, D, Hkv, P, hd) after RoPE, and z (D, d), the final-norm hidden state at
            each prompt's last token.
        """
        D, P = ids.shape
        device = ids.device
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        L, Hkv, hd = self.num_layers, self.num_kv_heads, self.head_dim
        K = torch.empty(L, D, Hkv, P, hd, dtype=dtype, device=device)
        Vv = torch.empty_like(K)
        z = torch.empty(D, self.hidden_size, dtype=dtype, device=device)
        causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
        eye = torch.eye(P, dtype=torch.bool, device=device)
        for a in range(0, D, chunk):
            b = min(D, a + chunk)
            m = (causal[None] & mask[a:b, None, :]) | eye[None]  # (c, P, P); pads see themselves
            x = F.embedding(ids[a:b], self.embed)
            cs, sn = cos[pos[a:b]][:, None], sin[pos[a:b]][:, None]  # (c,1,P,hd)
            c = b - a
            for li, ly in enumerate(self.layers):
                h = rms_norm(x, ly.ln1_w, ly.ln1_eps)
                q, k, v = ly.project_qkv(h, self.num_heads * hd, Hkv * hd)
                q = q.reshape(c, P, self.num_heads, hd).transpose(1, 2)
                k = k.reshape(c, P, Hkv, hd).transpose(1, 2)
                v = v.reshape(c, P, Hkv, hd).transpose(1, 2)
                q, k = rope(q, k, cs, sn)
                K[li, a:b] = k
                Vv[li, a:b] = v
                qg = q.reshape(c, Hkv, self.group * P, hd)
                s = torch.matmul(qg, k.transpose(-1, -2)) * self.scale  # (c,Hkv,g*P,P)
                s = s.view(c, Hkv, self.group, P, P).float().masked_fill(~m[:, None, None], float("-inf"))
                pr = torch.softmax(s, dim=-1).to(dtype).view(c, Hkv, self.group * P, P)
                o = torch.matmul(pr, v).view(c, self.num_heads, P, hd).transpose(1, 2).reshape(c, P, -1)
                x = x + linear(o, ly.o)
                x = x + self.mlp(rms_norm(x, ly.ln2_w, ly.ln2_eps), ly)
            z[a:b] = rms_norm(x[:, -1], self.norm_w, self.norm_eps)
        return K, Vv, z

    def decode_step(self, kn: Kernels, tok: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                    amask: torch.Tensor, slot: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor,
                    dk: torch.Tensor, dv: torch.Tensor, D: int, n: int, Tb: int, dtype: torch.dtype) -> torch.Tensor:
        """One transformer step of B = D·n rows on their last token; returns the next pre-logit.

        Args:
            kn: the elementwise kernels.
            tok: (B,) the tokens.
            cos: (B, 1, hd) RoPE cosines at each row's position.
            sin: (B, 1, hd) RoPE sines.
            amask: (B, 1, 1, P + Tb) bool, the prefix key mask then the decode slots attended.
            slot: (1,) long, the decode slot the step's K/V are written to.
            pk: (L, D, Hkv, P, hd) the prompts' keys.
            pv: (L, D, Hkv, P, hd) the prompts' values.
            dk: (L, B, Hkv, T, hd) the decode cache's keys (written at ``slot``; only its first
                ``Tb`` slots are read).
            dv: (L, B, Hkv, T, hd) the decode cache's values, likewise.
            D: prompts.
            n: rows per prompt.
            Tb: decode slots attended.
            dtype: the compute dtype.

        Returns:
            z (B, d), the final-norm hidden state.
        """
        Hkv, hd, g = self.num_kv_heads, self.head_dim, self.group
        x = F.embedding(tok, self.embed)
        ly0 = self.layers[0]
        h = kn.rms_norm(x, ly0.ln1_w, ly0.ln1_eps)
        nq, nkv = self.num_heads * hd, Hkv * hd
        for li, ly in enumerate(self.layers):
            qp, qd, k, v = kn.qkv_rope(*ly.project_qkv(h, nq, nkv), cos, sin, D, n, Hkv, g, hd)
            dkl, dvl = dk[li], dv[li]  # (B,Hkv,T,hd) views
            dkl.index_copy_(2, slot, k.unsqueeze(2))
            dvl.index_copy_(2, slot, v.unsqueeze(2))
            dkl, dvl = dkl[:, :, :Tb], dvl[:, :, :Tb]
            # prefix part: the n*g queries of prompt j against prompt j's keys, no copy of K/V
            sp = torch.matmul(qp, pk[li].transpose(-1, -2))  # (D,Hkv,n*g,P)
            sd = torch.matmul(qd, dkl.transpose(-1, -2))  # (B,Hkv,g,Tb)
            pp, pd = kn.attn_probs(sp, sd, amask, self.scale, dtype, D, n)
            o = kn.attn_merge(torch.matmul(pp, pv[li]), torch.matmul(pd, dvl), n)  # (B,H*hd)
            x, h = kn.add_norm(x, linear(o, ly.o), ly.ln2_w, ly.ln2_eps)
            m = linear(kn.swiglu(*ly.project_gate_up(h)), ly.down)
            nxt = self.layers[li + 1] if li + 1 < len(self.layers) else None
            if nxt is None:
                x, h = kn.add_norm(x, m, self.norm_w, self.norm_eps)
            else:
                x, h = kn.add_norm(x, m, nxt.ln1_w, nxt.ln1_eps)
        return h
