r"""D forward passes taking turns module by module: each pass unchanged, the weights read once.

The batch-invariant eager engine decodes each prompt's n rows with a forward pass of its own,
so that prompt j's kernels see the very shapes and values they see when j is decoded alone.
Run one after the other, the D passes read every weight matrix from memory D times per token.
:class:`TakeTurns` runs them *interleaved*: pass 0 up to its first call of a weight-holding
module, then pass 1 up to the same call, ..., then pass 0 runs that module and goes on to the
next one. Each pass makes exactly the calls it makes alone, on exactly the same tensors, in the
same order — only the order *across* passes changes, and no pass reads another's tensors — so
its results are bitwise those of the pass run alone; what changes is that a module's weights,
just read by pass 0, are still in the CPU cache for passes 1..D−1.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

__all__ = ["TakeTurns", "weight_modules"]

R = TypeVar("R")


def weight_modules(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The submodules of ``module`` that hold a weight matrix of their own (a parameter with
    two or more dims: linear layers, GPT-2's ``Conv1D``, embeddings): where passes take turns."""
    return [m for m in module.modules() if any(p.dim() >= 2 for p in m.parameters(recurse=False))]


class _Stopped(Exception):
    """Raised inside a waiting pass when the run is stopped (the caller was interrupted)."""


class TakeTurns:
    """Run D zero-argument callables (forward passes of one model) in turn at every call of
    ``modules``, one at a time, each in a thread of its own.

    Each callable runs with the caller's grad/inference mode and intra-op thread count. Only
    one runs at any time (the others wait on an event), so the kernels they call are those,
    with the same thread count, that they call when run alone.

    Args:
        modules: the modules at whose calls the passes take turns (see :func:`weight_modules`).
    """

    def __init__(self, modules: Sequence[torch.nn.Module]) -> None:
        self.modules = list(modules)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._events: list[threading.Event] = []
        self._active: list[int] = []
        self._stopped = False

    def run(self, calls: Sequence[Callable[[], R]]) -> list[R]:
        """The results of ``calls`` (each as if run alone), in order. The first exception a
        call raised is raised here once all have ended."""
        if len(calls) <= 1:
            return [c() for c in calls]
        D = len(calls)
        self._events = [threading.Event() for _ in range(D)]
        self._active = list(range(D))
        self._stopped = False
        results: list[Any] = [None] * D
        errors: list[BaseException | None] = [None] * D
        mode = (torch.is_inference_mode_enabled(), torch.is_grad_enabled(), torch.get_num_threads())
        threads = [threading.Thread(target=self._work, args=(j, calls[j], mode, results, errors), daemon=True)
                   for j in range(D)]
        hooks = [m.register_forward_pre_hook(self._turn) for m in self.modules]
        try:
            for t in threads:
                t.start()
            self._events[0].set()
            for t in threads:
                t.join()
        except BaseException:  # interrupted while waiting: stop every pass, then re-raise
            self._stopped = True
            for e in self._events:
                e.set()
            for t in threads:
                t.join()
            raise
        finally:
            for h in hooks:
                h.remove()
        for err in errors:
            if err is not None:
                raise err
        return results

    def _work(self, j: int, call: Callable[[], Any], mode: tuple[bool, bool, int], results: list[Any],
              errors: list[BaseException | None]) -> None:
        inference, grad, threads = mode
        self._local.index = j
        try:
            torch.set_num_threads(threads)
            self._wait(j)
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                results[j] = call()
        except BaseException as exc:  # noqa: BLE001 (handed to the caller, which raises it)
            errors[j] = exc
        finally:
            self._local.index = None
            with self._lock:
                nxt = self._next(j)
                self._active.remove(j)
            if nxt != j:
                self._events[nxt].set()

    def _next(self, j: int) -> int:
        """The pass after j in turn (j itself when it is the only one left)."""
        act = self._active
        return act[(act.index(j) + 1) % len(act)]

    def _wait(self, j: int) -> None:
        self._events[j].wait()
        self._events[j].clear()
        if self._stopped:
            raise _Stopped

    def _turn(self, module: torch.nn.Module, args: Any) -> None:
        """Forward pre-hook: hand the turn to the next pass, wait for it to come back."""
        j = getattr(self._local, "index", None)
        if j is None:  # a call outside run(), or from another thread
            return
        with self._lock:
            nxt = self._next(j)
        self._events[nxt].set()
        self._wait(j)
