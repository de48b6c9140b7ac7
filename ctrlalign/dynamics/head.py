r"""The output head :math:`\ell = g(W z + b)` that every engine applies to pre-logits z.

W (V, d) and b (V,) are the model's output layer; g is the model's own logit transform
(identity for most models; Gemma-2/3's soft-capping :math:`g(\ell)=c\tanh(\ell/c)`,
Cohere's ``logit_scale``, Granite's ``logits_scaling``). :func:`verify_head` checks that the
backbone's last hidden state through the head reproduces the model's logits, so a control
added to z acts on the true pre-logit.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["OutputHead", "UnsupportedModelError", "backbone_of", "verify_head"]


class UnsupportedModelError(ValueError):
    """The model's logits are not ``g(W z + b)`` of its backbone's last hidden state z."""


# config attributes that transform the head's output, and what we do with each
_SOFTCAP_ATTRS = ("final_logit_softcapping",)
_MULTIPLY_ATTRS = ("logit_scale",)  # Cohere: logits * logit_scale
_DIVIDE_ATTRS = ("logits_scaling",)  # Granite: logits / logits_scaling


class OutputHead:
    r"""The output head :math:`\ell = g(W x + b)` applied to pre-logits x.

    Args:
        weight: W, (V, d).
        bias: b, (V,), or None (b = 0).
        scale: multiply the logits by this (None: 1). Cohere's ``logit_scale``, Granite's
            ``1/logits_scaling``.
        softcap: c for :math:`g(\ell) = c\tanh(\ell/c)` (Gemma-2/3's
            ``final_logit_softcapping``), applied after ``scale``; None: no capping.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        scale: float | None = None,
        softcap: float | None = None,
    ) -> None:
        if weight.dim() != 2:
            raise ValueError(f"head weight must be (vocab, hidden_size), got {tuple(weight.shape)}")
        self.weight = weight
        self.bias = bias
        self.scale = None if scale is None or float(scale) == 1.0 else float(scale)
        self.softcap = None if softcap is None else float(softcap)

    @property
    def vocab_size(self) -> int:
        """Rows of W (the vocabulary size)."""
        return self.weight.shape[0]

    @property
    def hidden_size(self) -> int:
        """Columns of W: d, the pre-logit dimension."""
        return self.weight.shape[1]

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """W x + b for x of shape (..., d) → (..., V), before the transform g."""
        return F.linear(x, self.weight, self.bias)

    def transform(self, logits: torch.Tensor) -> torch.Tensor:
        """g: the model's own post-head transform (scale, then soft-cap)."""
        if self.scale is not None:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """g(W x + b) for x of shape (..., d) → (..., V)."""
        return self.transform(self.linear(x))

    @classmethod
    def from_model(cls, model: Any) -> OutputHead:
        """The head of a ``transformers`` causal LM, with the transform named by its config."""
        emb = model.get_output_embeddings()
        if emb is None or not hasattr(emb, "weight"):
            raise UnsupportedModelError(
                f"{type(model).__name__}.get_output_embeddings() returned {emb!r}; a causal LM "
                "with a linear output head is required"
            )
        cfg = model.config
        cfgs = [cfg] + [c for c in (getattr(cfg, "text_config", None),) if c is not None]

        def find(names: tuple[str, ...]) -> float | None:
            for c in cfgs:
                for name in names:
                    val = getattr(c, name, None)
                    if val is not None and not isinstance(val, bool):
                        return float(val)
            return None

        softcap = find(_SOFTCAP_ATTRS)
        mult = find(_MULTIPLY_ATTRS)
        div = find(_DIVIDE_ATTRS)
        scale = None
        if mult is not None:
            scale = mult
        if div is not None:
            scale = (scale or 1.0) / div
        return cls(emb.weight, getattr(emb, "bias", None), scale=scale, softcap=softcap)

    def describe(self) -> str:
        """The head as a formula, e.g. ``W z + b`` or ``30·tanh(W z/30)``."""
        parts = ["W z + b" if self.bias is not None else "W z"]
        s = parts[0]
        if self.scale is not None:
            s = f"{self.scale:g}·({s})"
        if self.softcap is not None:
            s = f"{self.softcap:g}·tanh({s}/{self.softcap:g})"
        return s


def backbone_of(model: Any) -> Any:
    """The backbone ``model.base_model`` whose ``last_hidden_state`` is the pre-logit z.

    Raises:
        UnsupportedModelError: the model has no separate backbone.
    """
    base = getattr(model, "base_model", None)
    if base is None or base is model:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no separate backbone (model.base_model); cannot read "
            "its pre-logits"
        )
    return base


def verify_head(model: Any, head: OutputHead, *, num_tokens: int = 6) -> float:
    """Check that ``head(backbone(ids).last_hidden_state)`` equals ``model(ids).logits``.

    Runs the model on a short fixed input. Returns the max absolute difference.

    Raises:
        UnsupportedModelError: naming the architecture and the size of the mismatch.
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    vocab = head.vocab_size
    ids = (torch.arange(num_tokens, device=device) * 7 + 3) % vocab
    ids = ids.unsqueeze(0)
    with torch.inference_mode():
        full = model(input_ids=ids, use_cache=False).logits.float()
        z = backbone_of(model)(input_ids=ids, use_cache=False).last_hidden_state
        ours = head(z).float()
    if full.shape != ours.shape:
        raise UnsupportedModelError(
            f"{type(model).__name__}: logits have shape {tuple(full.shape)} but the head applied "
            f"to the backbone's last hidden state gives {tuple(ours.shape)}"
        )
    err = float((full - ours).abs().max())
    tol = (1e-3 if dtype == torch.float32 else 5e-2) * (1.0 + float(full.abs().max()))
    if not math.isfinite(err) or err > tol:
        raise UnsupportedModelError(
            f"{type(model).__name__} ({model.config.model_type}): its logits differ from "
            f"{head.describe()} of the backbone's last hidden state by up to {err:.3g} (allowed "
            f"{tol:.3g}). The model transforms its logits or hidden states in a way ctrlalign "
            "does not know (known: final_logit_softcapping, logit_scale, logits_scaling), so "
            "the control would not act on the true pre-logit. Supported: Llama-family, GPT-2, "
            "Qwen2, Gemma-2/3 and others whose head is a plain linear layer."
        )
    return err
