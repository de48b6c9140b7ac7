"""One builder: the objects of a run — dynamics, reward, controller, selection — from their configs.

``ctrlalign align``, ``ctrlalign run`` and ``ctrlalign bench`` all build through here, so a bad
value is reported the same way everywhere: a :class:`~ctrlalign._checks.ConfigError` (a
``ValueError``) naming the value and what is allowed, never a traceback from ``transformers``
or ``torch``.

* :func:`build_dynamics` — the :class:`~ctrlalign.dynamics.CausalLM` of a
  :class:`~ctrlalign.config.ModelConfig`. Before anything is loaded it checks the device
  (:func:`check_device`); the model is loaded by :func:`ctrlalign.models.load_model`, which
  checks its name first.
* :func:`build_reward` — Σ weight·reward from reward terms; an option whose value is
  ``from_prompts`` is replaced by the prompt set's reference answers ({prompt text: reference}).
* :func:`build_controller`, :func:`build_selection`, :func:`build_space` — from the
  ``controller`` and ``space`` sections (:class:`~ctrlalign.sections.ComponentSection`), which
  construct their component once, from its declaration (:mod:`ctrlalign.declare`), when the
  config is validated; these return that object rather than building (and checking) again.
* :func:`check_run_fits` — what can only be checked once the model is loaded: every prompt
  fits the model's context, and σ cannot overflow the logits' dtype.

Long prompts: **refused**, never truncated. A prompt whose formatted token count P plus T =
``max_new_tokens`` exceeds the model's context (``max_position_embeddings``) is reported with
its id and the numbers; cutting it silently would align a different prompt than the one the
results file names.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ._checks import ConfigError, first_line
from .data import PromptItem
from .models import check_device, is_offline, load_model, resolve_dtype

if TYPE_CHECKING:
    from .config import ControllerConfig, ModelConfig, RewardTerm, SpaceConfig
    from .controllers.base import Controller
    from .dynamics import CausalLM
    from .rewards.base import Reward
    from .selection import Selection
    from .spaces import ControlSpace

__all__ = [
    "FROM_PROMPTS",
    "build_controller",
    "build_dynamics",
    "build_reward",
    "build_selection",
    "build_space",
    "check_device",
    "check_prompts_fit",
    "check_run_fits",
    "check_sigma_fits",
    "context_length",
    "is_offline",
    "versions",
]

#: a reward option with this value is replaced by the prompt set's references
FROM_PROMPTS = "from_prompts"



def versions() -> dict[str, str]:
    """Versions of ctrlalign, torch, transformers and Python (recorded with results)."""
    import transformers

    from . import __version__

    return {"ctrlalign": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


# --------------------------------------------------------------------------------------------
# dynamics


def build_dynamics(model: ModelConfig) -> CausalLM:
    """The :class:`~ctrlalign.dynamics.CausalLM` of a model config (device checked first).

    ``chat_template: true`` means "when the tokenizer has one" (a tokenizer without a template
    takes plain prompts); ``false`` never applies one.

    Raises:
        ConfigError: see :func:`check_device` and :func:`ctrlalign.models.load_model`; or the model's head is
            not one ctrlalign can steer (``UnsupportedModelError``, also a ``ValueError``).
    """
    from .dynamics import CausalLM
    from .dynamics.decoding import SamplingConfig

    device = check_device(model.device)
    sampling = SamplingConfig(max_new_tokens=model.max_new_tokens, temperature=model.temperature,
                              top_k=model.top_k, top_p=model.top_p, greedy=model.greedy)
    lm, tok = load_model(model.name, device, resolve_dtype(model.dtype, device), model.trust_remote_code)
    kw: dict[str, Any] = {"sampling": sampling, "chat_template": None if model.chat_template else False,
                          "system_prompt": model.system_prompt}
    if model.engine != "eager":
        kw["engine"] = model.engine
    elif model.batch_invariant is False:  # unset or true: the eager engine's own default, invariant
        kw["engine_options"] = {"batch_invariant": False}
    return CausalLM(lm, tok, **kw)


# --------------------------------------------------------------------------------------------
# what needs the loaded model


def context_length(dynamics: Any) -> int | None:
    """The model's context in tokens (``max_position_embeddings`` or ``n_positions``), or None."""
    cfg = getattr(getattr(dynamics, "model", None), "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_prompts_fit(dynamics: Any, items: Sequence[PromptItem]) -> None:
    """Refuse prompts whose formatted length P plus T = ``max_new_tokens`` exceeds the context.

    Raises:
        ConfigError: naming the first such prompt's id, P, T and the context length.
    """
    limit = context_length(dynamics)
    if limit is None or not hasattr(dynamics, "format_prompt"):
        return
    T = dynamics.max_horizon or 0
    for it in items:
        text, special = dynamics.format_prompt(it.text)
        P = len(dynamics.tokenizer(text, add_special_tokens=special)["input_ids"])
        if P + T > limit:
            raise ConfigError(
                f"prompt {it.id!r} is {P} tokens; with max_new_tokens = {T} that is {P + T} > the model's context "
                f"of {limit} tokens. Long prompts are refused, not truncated: shorten it, lower max_new_tokens, or "
                "drop it from the set")


def check_sigma_fits(controller: Controller, dynamics: Any, space: ControlSpace | None = None) -> None:
    """Refuse a σ whose controls could overflow the logits' dtype, in the control space used.

    A token's control v_t = (Aθ)_t with θ ~ N(0, σ² I) has ‖v_t‖ ≈ σ·√m_t, where m_t is the
    number of pre-logit directions it spans (:meth:`~ctrlalign.spaces.ControlSpace.token_dimension`:
    d per token, shared or in blocks; r in a rank-r subspace); it moves logit v by W_v·v_t, of
    size up to ≈ σ·√m_t·‖W_v‖. With a margin of 10 standard deviations and room for its square
    (weights, ‖θ‖²/σ²), the check is ``(10·σ·√m_t·max(1, max_v ‖W_v‖))² < finfo(dtype).max``.

    Args:
        space: the run's control space (None: per-token, m_t = d).

    Raises:
        ConfigError: naming σ, the dtype, the space and the largest σ allowed.
    """
    sigma = getattr(controller, "sigma", None)
    head = getattr(dynamics, "head_weight", None)
    if not sigma or head is None:
        return
    W = head()
    d = W.shape[-1]
    m = d if space is None else space.token_dimension(d)
    row = max(1.0, float(W.detach().float().norm(dim=-1).max()))
    top = math.sqrt(torch.finfo(dynamics.dtype).max)
    allowed = top / (10.0 * math.sqrt(m) * row)
    if sigma > allowed:
        where = "per-token" if space is None else space.describe()
        raise ConfigError(f"sigma (σ) = {sigma:g} would overflow the model's {str(dynamics.dtype).removeprefix('torch.')} "
                          f"logits ({where} controls span {m} of d = {d} directions per token, max row norm of W = "
                          f"{row:.3g}); use σ <= {allowed:.3g}")


def check_run_fits(dynamics: Any, controller: Controller, items: Sequence[PromptItem],
                   space: ControlSpace | None = None) -> None:
    """:func:`check_prompts_fit` and :func:`check_sigma_fits` (in ``space``; None: per-token)."""
    check_sigma_fits(controller, dynamics, space)
    check_prompts_fit(dynamics, items)


# --------------------------------------------------------------------------------------------
# reward, controller, selection


def _substitute_references(term: RewardTerm, items: Sequence[PromptItem] | None) -> dict[str, Any]:
    """``term.options`` with every ``from_prompts`` value replaced by {prompt text: reference}."""
    opts = dict(term.options)
    for key, value in opts.items():
        if value != FROM_PROMPTS:
            continue
        if items is None:
            raise ConfigError(f"reward {term.name!r}: option {key}: {FROM_PROMPTS} needs a prompt set")
        missing = [it.id for it in items if it.reference is None]
        if missing:
            raise ConfigError(f"reward {term.name!r} uses {key}: {FROM_PROMPTS} but prompts {missing[:5]} have no "
                              "reference; set require_reference: true")
        opts[key] = {it.text: it.reference for it in items}
    return opts


def build_reward(terms: Sequence[RewardTerm], items: Sequence[PromptItem] | None = None) -> Reward | None:
    """Σ weight·reward as a :class:`~ctrlalign.rewards.base.Reward` (a single term of weight 1 is
    returned as is); None for no terms.

    Args:
        terms: the reward terms (weights are finite, checked by the config).
        items: the prompt set, for options set to ``from_prompts``.
    """
    from .rewards import WeightedSum, get_reward

    if not terms:
        return None
    built = []
    for t in terms:
        opts = _substitute_references(t, items)
        try:
            built.append((t.weight, get_reward(t.name, **opts)))
        except TypeError as exc:
            raise ConfigError(f"reward {t.name!r}: bad options {sorted(opts)}: {first_line(exc)}") from None
    if len(built) == 1 and built[0][0] == 1.0:
        return built[0][1]
    return WeightedSum(built)


def build_controller(config: ControllerConfig, **overrides: Any) -> Controller:
    """The controller of a controller section: the one built when it was validated (with
    ``overrides``, a new one with those values replaced)."""
    return config.build(**overrides)


def build_space(config: SpaceConfig) -> ControlSpace:
    """The (unbound) control space of a space section, built when it was validated."""
    return config.build()


def build_selection(config: ControllerConfig) -> Selection | None:
    """The configured selection (None: the controller's default)."""
    return config.build_selection()
