"""Record bit-for-bit pins of rollouts and ``align`` runs, to check a refactor changes no result.

Run from the repository root: ``python tests/pins/record_pins.py`` (writes
``tests/pins/pins_main.json``); ``tests/test_pins.py`` recomputes every entry with
:func:`compute_pins` and compares exactly. Floats are stored as ``float.hex`` strings, so the
comparison is bitwise.

What is pinned (all on the CPU, one thread):

* rollouts (``prepare`` + ``rollout``) of the toy systems and of a tiny random Llama (eager
  engine with ``batch_invariant`` False and True (its default), static engine with ``compile="none"``),
  uncontrolled and under controls V = ``space.bind(τ, dynamics).controls(θ)`` from a seeded θ
  for every control space;
* ``ctrlalign.align`` for every registered controller (Best-of-N with σ = 0 and σ > 0) × every
  control space on the linear toy system and on the tiny Llama, eager engine with
  ``batch_invariant`` False (``align/lm_eager``) and True (``align/lm_eager_bi``, added when it
  became the default) (:func:`align_pins`, the one function that builds controllers and spaces).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PINS = HERE / "pins_main.json"

for p in (str(ROOT), str(ROOT / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

from conftest import PROMPTS, make_model, make_tokenizer

import ctrlalign as ca
from ctrlalign.controllers import CONTROLLERS
from ctrlalign.dynamics import CausalLM, SamplingConfig
from ctrlalign.spaces import SPACES, Blocks, Subspace
from ctrlalign.testing import make_linear, make_softmax_head

#: T for the tiny model; τ of its controls
T_LM, TAU_LM = 6, 4


# ------------------------------------------------------------------------------ encoding
def encode(x: Any) -> Any:
    """Exact JSON form: tensors as {dtype, shape, data} (floats as hex), floats as hex."""
    if isinstance(x, torch.Tensor):
        flat = x.detach().cpu().flatten()
        if flat.is_floating_point():
            data = [float(v).hex() for v in flat.double().tolist()]
        elif flat.dtype == torch.bool:
            data = [bool(v) for v in flat.tolist()]
        else:
            data = [int(v) for v in flat.tolist()]
        return {"dtype": str(x.dtype), "shape": list(x.shape), "data": data}
    if isinstance(x, float):
        return {"float": x.hex()}
    if isinstance(x, dict):
        return {str(k): encode(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [encode(v) for v in x]
    return x


def outcomes_record(out: Any) -> dict[str, Any]:
    """The exact fields of an :class:`~ctrlalign.dynamics.base.Outcomes`."""
    rec: dict[str, Any] = {}
    for name in ("values", "tokens", "lengths", "logprobs", "base_logprobs"):
        v = getattr(out, name)
        if v is not None:
            rec[name] = v
    if out.texts is not None:
        rec["texts"] = out.texts
    return rec


def result_record(res: Any) -> dict[str, Any]:
    """The exact fields of an :class:`~ctrlalign.align.AlignmentResult`."""
    return {
        "rewards": res.rewards,
        "mean": res.state.mean,
        "std": res.state.std,
        "responses": [r.to_dict() for r in res.responses],
        "trace": [{"kept_reward": rec.kept_reward, "chosen": rec.chosen, "replaced": rec.replaced,
                   "mean_reward": rec.diagnostics.mean_reward, "max_reward": rec.diagnostics.max_reward}
                  for rec in res.trace],
        "reward_calls": res.reward_calls,
    }


# ------------------------------------------------------------------------------ systems
def tiny_lm(engine: str, **options: Any) -> CausalLM:
    """The tiny random Llama of tests/conftest.py (seed 0), T = 6, ignore no EOS."""
    model = make_model("llama")
    return CausalLM(model, make_tokenizer(), sampling=SamplingConfig(max_new_tokens=T_LM), engine=engine,
                    engine_options=options)


def lm_systems() -> dict[str, CausalLM]:
    """The tiny model under each engine setting pinned."""
    return {
        "eager": tiny_lm("eager", batch_invariant=False),
        "eager_bi": tiny_lm("eager"),  # the default: batch-invariant
        "static": tiny_lm("static", compile="none"),
    }


def spaces_for(dynamics: Any, horizon: int) -> dict[str, Any]:
    """Every registered space, bound; Subspace with fixed directions when there is no head."""
    out = {}
    for name in ("per-token", "shared", "blocks", "subspace"):  # the built-in ones (tests register more)
        if name == "blocks":
            space = Blocks(block_size=2)
        elif name == "subspace":
            d = dynamics.hidden_size
            if dynamics.head_weight() is None:
                g = torch.Generator().manual_seed(5)
                space = Subspace(rank=1, directions=torch.randn(1, d, generator=g, dtype=torch.float64))
            else:
                space = Subspace(rank=2)
        else:
            space = SPACES[name]()
        out[name] = space.bind(horizon, dynamics)
    return out


def rollout_pins(dynamics: Any, prompts: list[Any], horizon: int, n: int = 3, seed: int = 11) -> dict[str, Any]:
    """Rollouts uncontrolled and under seeded controls in every space."""
    ctx = dynamics.prepare(prompts)
    D = len(prompts)
    res: dict[str, Any] = {}

    def gens(s: int) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s * 100 + j) for j in range(D)]

    res["none"] = outcomes_record(dynamics.rollout(ctx, None, gens(seed), n))
    for i, (name, space) in enumerate(spaces_for(dynamics, horizon).items()):
        g = torch.Generator().manual_seed(seed + i)
        theta = torch.randn(D, n, *space.shape, generator=g, dtype=torch.float64)
        V = space.controls(theta).to(dynamics.dtype)
        res[name] = outcomes_record(dynamics.rollout(ctx, V, gens(seed + 1 + i), n))
    return res


# ------------------------------------------------------------------------------ align
def align_pins(dynamics: Any, reward: Any, prompts: list[Any], horizon: int, *, n: int = 3, k: int = 2) -> dict[str, Any]:
    """``align`` for every controller × space. The only place that builds controllers: adapt
    it when their construction changes (the recorded results must not)."""
    out: dict[str, Any] = {}
    variants = [("bon", {"sigma": 0.0}), ("bon_sigma", {"sigma": 0.4})]
    variants += [(name, {"sigma": 0.4}) for name, c in CONTROLLERS.items()
                 if name != "bon" and issubclass(c, ca.Controller)]  # the open-loop ones (align's)
    for label, kw in variants:
        cls = CONTROLLERS["bon" if label == "bon_sigma" else label]
        for sname, space in spaces_for(dynamics, horizon).items():
            ctrl = cls(num_samples=n, num_iterations=k, **kw)
            res = ca.align(dynamics, reward, ctrl, prompts, space=space, seed=3)
            out[f"{label}/{sname}"] = result_record(res)
    return out


def compute_pins() -> dict[str, Any]:
    """Everything pinned, as plain Python/tensor objects (not yet encoded)."""
    torch.set_num_threads(1)
    pins: dict[str, Any] = {}
    lin, lin_reward, lin_prompts = make_linear(0)
    sh, sh_reward, sh_prompts = make_softmax_head(0)
    pins["rollout/linear"] = rollout_pins(lin, lin_prompts, lin.horizon)
    pins["rollout/softmax_head"] = rollout_pins(sh, sh_prompts, sh.horizon)
    lm_prompts = PROMPTS[:3]
    for key, lm in lm_systems().items():
        pins[f"rollout/lm_{key}"] = rollout_pins(lm, lm_prompts, TAU_LM)
    pins["align/linear"] = align_pins(lin, lin_reward, lin_prompts[:2], lin.horizon)
    pins["align/softmax_head"] = align_pins(sh, sh_reward, sh_prompts[:2], sh.horizon)
    lm_reward = ca.CallableReward(lambda p, s: float(len(set(s.tokens))) - 0.1 * len(s.tokens))
    pins["align/lm_eager"] = align_pins(tiny_lm("eager", batch_invariant=False), lm_reward, lm_prompts[:2], TAU_LM)
    pins["align/lm_eager_bi"] = align_pins(tiny_lm("eager"), lm_reward, lm_prompts[:2], TAU_LM)
    return pins


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pins = encode(compute_pins())
    PINS.write_text(json.dumps(pins, separators=(",", ":")) + "\n")
    print(f"wrote {PINS} ({PINS.stat().st_size / 1e6:.2f} MB, {len(pins)} groups)")


if __name__ == "__main__":
    main()
