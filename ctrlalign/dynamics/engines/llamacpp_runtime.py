r"""A llama.cpp model and context through llama-cpp-python's low-level API: batched decode
calls over many KV-cache sequences, and the sequences themselves.

What :class:`~ctrlalign.dynamics.engines.llamacpp.LlamaCppEngine` needs from llama.cpp and
nothing more: :meth:`LlamaCppRuntime.decode` runs the transformer on N tokens of any
sequences in one ``llama_decode`` call and returns their logits (N, V) as one array;
:class:`Sequences` are KV-cache sequence ids that are copied (``llama_memory_seq_cp``: the new
sequence shares the source's cells, nothing is copied in memory) and freed
(``llama_memory_seq_rm``). Sampling is not done here.

The context uses one *unified* KV cache of ``n_ctx`` cells shared by all sequences (so a
prompt's cells serve every row forked from it) and flash attention, whose CPU kernel skips the
cells of other sequences (masked with −∞) instead of computing them: a row's attention costs
its own prompt and tokens, not the whole cache. At most ``n_seq_max`` ≤ 256 sequences exist at
once (llama.cpp's ``LLAMA_MAX_SEQ``): the D prompts of each live prefix plus the rows of each
live decode state.

Sequence ids are handed out by the runtime and returned when the :class:`Sequences` object that
holds them is garbage-collected (a ``weakref.finalize``), so a state dropped half-way frees its
cache cells.
"""

from __future__ import annotations

import ctypes
import os
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from ..._checks import ConfigError

__all__ = ["LlamaCppRuntime", "Sequences", "import_llama_cpp"]

_INSTALL = "pip install 'llama-cpp-python>=0.3' (or: pip install 'ctrlalign[llamacpp]'); it builds llama.cpp from source"


def import_llama_cpp() -> Any:
    """The ``llama_cpp`` module (llama-cpp-python).

    Raises:
        ConfigError: it is not installed, with the command that installs it.
    """
    try:
        import llama_cpp  # optional, heavy: builds llama.cpp
    except ImportError as e:
        raise ConfigError(f"the llama.cpp engine needs llama-cpp-python, which is not installed ({e}); {_INSTALL}") from e
    return llama_cpp


class Sequences:
    """KV-cache sequence ids owned by one prefix or one decode state (mutable: a select
    rewrites them in place). Returned to the runtime, with their cells, when this object is
    garbage-collected.

    Attributes:
        ids: (R,) int32 numpy array of llama.cpp sequence ids, one per prompt or row.
    """

    def __init__(self, runtime: LlamaCppRuntime, ids: np.ndarray) -> None:
        self.runtime = runtime
        self.cell = [np.asarray(ids, dtype=np.int32)]
        weakref.finalize(self, runtime.release, self.cell)

    @property
    def ids(self) -> np.ndarray:
        """(R,) int32 sequence ids."""
        return self.cell[0]

    def gather(self, index: np.ndarray) -> None:
        """Become sequences ``index`` (R',) of these (indices into 0..R−1, repeats allowed),
        in place: the first use of an old sequence keeps its id, every further use gets a fresh
        id whose cells are shared with it (``seq_cp``), and unused old sequences are removed."""
        old = self.ids
        rt = self.runtime
        used = np.zeros(len(old), dtype=bool)
        first = np.zeros(len(index), dtype=bool)
        for i, src in enumerate(index.tolist()):  # R' ≤ 256 small ops, once per select
            if not used[src]:
                used[src] = first[i] = True
        new = np.empty(len(index), dtype=np.int32)
        new[first] = old[index[first]]
        fresh = rt.acquire(int((~first).sum()))
        new[~first] = fresh
        for src, dst in zip(old[index[~first]].tolist(), fresh.tolist()):
            rt.copy(src, dst)
        rt.remove(old[~used])
        self.cell[0] = new


class LlamaCppRuntime:
    r"""A GGUF model loaded by llama.cpp, one context over it, and a decode batch.

    Args:
        path: the GGUF file.
        n_threads: CPU threads for decoding (default: ``torch.get_num_threads()`` is the
            engine's choice; here None means ``os.cpu_count()``).
        n_ctx: KV-cache cells shared by all sequences: the prompts' tokens plus T per row of
            every live state must fit (SmolLM2-135M, float16 cache: 23 KB a cell).
        n_batch: the most tokens one ``llama_decode`` call takes (prompts longer than this are
            prefilled in several calls; decode steps need ``rows`` ≤ n_batch).
        n_seq_max: sequences at once (≤ 256).
        cache_type: ``"f16"`` (llama.cpp's default) or ``"f32"`` KV cache.
        flash_attn: llama.cpp's flash attention (default): a row's attention skips the cells of
            other sequences; its CPU kernel rounds the attention through float16 (relative error
            ~1e-4 even with a float32 cache). False: plain attention over all used cells, masked.
    """

    def __init__(self, path: str | Path, *, n_threads: int | None = None, n_ctx: int = 16384,
                 n_batch: int = 512, n_seq_max: int = 256, cache_type: str = "f16",
                 flash_attn: bool = True) -> None:
        ll = self.ll = import_llama_cpp()
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"GGUF file {str(path)!r} does not exist")
        if not isinstance(flash_attn, bool):
            raise ConfigError(f"flash_attn must be True or False, got {flash_attn!r}")
        if cache_type not in ("f16", "f32"):
            raise ConfigError(f"cache_type must be 'f16' or 'f32', got {cache_type!r}")
        self.path = path
        quiet_logs(ll)
        ll.llama_backend_init()
        mparams = ll.llama_model_default_params()
        mparams.n_gpu_layers = 0
        model = ll.llama_model_load_from_file(str(path).encode(), mparams)
        if not model:
            raise ConfigError(f"llama.cpp could not load {str(path)!r} (not a GGUF model it supports?)")
        threads = int(n_threads or os.cpu_count() or 1)
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = int(n_ctx)
        cparams.n_batch = cparams.n_ubatch = int(n_batch)
        cparams.n_seq_max = int(n_seq_max)
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cparams.kv_unified = True
        cparams.no_perf = True
        cparams.embeddings = False
        cparams.type_k = cparams.type_v = ll.GGML_TYPE_F16 if cache_type == "f16" else ll.GGML_TYPE_F32
        ctx = ll.llama_init_from_model(model, cparams)
        if not ctx:
            ll.llama_model_free(model)
            raise ConfigError(f"llama.cpp could not create a context (n_ctx={n_ctx}, n_seq_max={n_seq_max}) "
                              f"for {str(path)!r}")
        self.model, self.ctx = model, ctx
        self._finalizer = weakref.finalize(self, _free, ll, ctx, model)
        self.memory = ll.llama_get_memory(ctx)
        self.n_threads = threads
        self.n_ctx = int(ll.llama_n_ctx(ctx))
        self.n_batch = int(ll.llama_n_batch(ctx))
        self.n_seq_max = int(ll.llama_n_seq_max(ctx))
        self.vocab_size = int(ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(model)))
        self.hidden_size = int(ll.llama_model_n_embd(model))
        self.metadata = read_metadata(ll, model)
        self.free = list(range(self.n_seq_max - 1, -1, -1))  # a stack: ids handed out from the end

        # the decode batch, built once over numpy buffers: a step fills slices, no per-token Python
        cap = self.n_batch
        self.tokens = np.zeros(cap, dtype=np.int32)
        self.positions = np.zeros(cap, dtype=np.int32)
        self.num_seq = np.ones(cap, dtype=np.int32)
        self.seq = np.zeros(cap, dtype=np.int32)
        self.seq_ptrs = (self.seq.ctypes.data + 4 * np.arange(cap, dtype=np.uintp)).astype(np.uintp)
        self.want = np.zeros(cap, dtype=np.int8)
        i32 = ctypes.POINTER(ctypes.c_int32)
        self.batch = ll.llama_batch(
            n_tokens=0,
            token=self.tokens.ctypes.data_as(i32),
            embd=None,
            pos=self.positions.ctypes.data_as(i32),
            n_seq_id=self.num_seq.ctypes.data_as(i32),
            seq_id=ctypes.cast(self.seq_ptrs.ctypes.data, ctypes.POINTER(i32)),
            logits=self.want.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
        )

    def __repr__(self) -> str:
        return (f"LlamaCppRuntime({self.path.name!r}, n_threads={self.n_threads}, n_ctx={self.n_ctx}, "
                f"n_seq_max={self.n_seq_max})")

    # ------------------------------------------------------------------ sequences
    def acquire(self, count: int) -> np.ndarray:
        """``count`` unused sequence ids (count,) int32, their cells empty.

        Raises:
            ConfigError: fewer than ``count`` are free, naming n_seq_max.
        """
        if count > len(self.free):
            raise ConfigError(
                f"the llama.cpp engine needs {count} more KV-cache sequences but {len(self.free)} of "
                f"n_seq_max={self.n_seq_max} are free: the prompts of live prefixes plus the rows of live states "
                f"(D·n) must stay within {self.n_seq_max}; decode fewer rows at once or drop unused states"
            )
        ids = [self.free.pop() for _ in range(count)]
        return np.asarray(ids, dtype=np.int32)

    def release(self, cell: list[np.ndarray]) -> None:
        """Remove the cells of the sequences ``cell[0]`` and free their ids (a
        :class:`Sequences` finaliser)."""
        if self._finalizer.alive:
            self.remove(cell[0])

    def remove(self, ids: np.ndarray) -> None:
        """Remove every cell of sequences ``ids`` and free the ids."""
        for s in np.asarray(ids).tolist():
            self.ll.llama_memory_seq_rm(self.memory, int(s), -1, -1)
            self.free.append(int(s))

    def copy(self, src: int, dst: int) -> None:
        """Sequence ``dst`` (empty) shares all of ``src``'s cells (no memory is copied)."""
        self.ll.llama_memory_seq_cp(self.memory, int(src), int(dst), -1, -1)

    # ------------------------------------------------------------------ decoding
    def decode(self, tokens: np.ndarray, positions: np.ndarray, seqs: np.ndarray,
               want: np.ndarray | None = None) -> np.ndarray:
        """One ``llama_decode`` over N tokens: token i (int32) at position ``positions[i]`` of
        sequence ``seqs[i]`` (each sequence's tokens in order, continuing its cells).

        Args:
            tokens: (N,) token ids, N ≤ n_batch (else ConfigError).
            positions: (N,) their positions in their sequences.
            seqs: (N,) their sequence ids.
            want: (N,) bool, the tokens whose logits to return (default: all).

        Returns:
            (N_out, V) float32 logits (a copy), N_out = the number of wanted tokens, in order.

        Raises:
            RuntimeError: llama.cpp found no room in the KV cache (naming n_ctx) or failed.
        """
        N = len(tokens)
        if N > self.n_batch:
            raise ConfigError(f"llama.cpp: a decode of {N} tokens (one per row) exceeds n_batch={self.n_batch}; pass "
                              f"the engine option n_batch >= {N}")
        self.tokens[:N] = tokens
        self.positions[:N] = positions
        self.seq[:N] = seqs
        self.want[:N] = 1 if want is None else want
        self.batch.n_tokens = N
        rc = self.ll.llama_decode(self.ctx, self.batch)
        if rc == 1:
            raise RuntimeError(
                f"llama.cpp: no room in the KV cache for {N} more tokens (n_ctx={self.n_ctx} cells hold the "
                "prompts of live prefixes plus every live row's tokens); pass a larger engine option n_ctx"
            )
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}")
        n_out = N if want is None else int(np.count_nonzero(want))
        ptr = self.ll.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_out, self.vocab_size)).copy()


def read_metadata(ll: Any, model: Any) -> dict[str, str]:
    """The GGUF file's metadata as strings (key → value; arrays are summarised by llama.cpp)."""
    out = {}
    buf = ctypes.create_string_buffer(4096)
    for i in range(int(ll.llama_model_meta_count(model))):
        if ll.llama_model_meta_key_by_index(model, i, buf, len(buf)) < 0:
            continue
        key = buf.value.decode("utf-8", "replace")
        if ll.llama_model_meta_val_str_by_index(model, i, buf, len(buf)) < 0:
            continue
        out[key] = buf.value.decode("utf-8", "replace")
    return out


_LOG_KEEP: list[Any] = []  # the ctypes log callback must outlive every llama.cpp call


def quiet_logs(ll: Any) -> None:
    """Route llama.cpp's log to stderr for errors only (ggml's level 4, and the continuation
    lines (5) of an error); it prints every load detail otherwise."""
    if _LOG_KEEP:
        return
    last = [0]

    @ll.llama_log_callback
    def callback(level: int, text: bytes, user_data: Any) -> None:
        if level != 5:
            last[0] = level
        if last[0] == 4:
            os.write(2, text)

    _LOG_KEEP.append(callback)
    ll.llama_log_set(callback, ctypes.c_void_p(0))


def _free(ll: Any, ctx: Any, model: Any) -> None:
    ll.llama_free(ctx)
    ll.llama_model_free(model)
