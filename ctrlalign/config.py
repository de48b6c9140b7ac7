"""Run configuration, validated with pydantic: every field documented, unknown keys rejected.

A config file (YAML, JSON or TOML) has four sections; only ``prompts`` is required::

    prompts: mt-bench          # a packaged set, a .txt/.jsonl file, or a list of strings
    limit: 8                   # optional: the first N prompts
    model:
      name: default            # the packaged SmolLM2-135M-Instruct, or an HF id / local path
      max_new_tokens: 32
    reward:
      - {name: sentiment, weight: 1.0}
      - {name: toxicity, weight: 0.5}
    controller:
      name: aisp
      num_samples: 8
      num_iterations: 4
      sigma: 0.3
      temperature: 0.1
      alpha: 0.99
    run:
      output: runs/mt-bench.jsonl
      seed: 0
      batch_prompts: 4
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from ._checks import ConfigError
from .controllers import CONTROLLERS, Controller
from .controllers.spec import check_applicable, config_fields
from .selection import Selection, make_selection

__all__ = [
    "ControllerConfig",
    "ModelConfig",
    "RewardTerm",
    "RunConfig",
    "RunSettings",
    "config_hash",
    "format_validation_error",
    "load_config",
    "read_config_file",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    """The policy model and how it samples."""

    name: str = Field("default", description="'default' (packaged SmolLM2-135M-Instruct), an HF id or a local path")
    device: str = Field("cpu", description="torch device, e.g. 'cpu', 'cuda', 'cuda:1'")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights and activations dtype")
    max_new_tokens: int = Field(32, ge=1, le=4096, description="T, tokens generated per response")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (1.0 is the method's dynamics)")
    top_k: int | None = Field(None, ge=1, description="top-k filter (None: off)")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus filter (None: off)")
    chat_template: bool = Field(True, description="apply the tokenizer's chat template when it has one")
    system_prompt: str | None = Field(None, description="optional system message for chat templates")
    greedy: bool = Field(False, description="greedy decoding of the controlled logits: the response is a function "
                         "of the controls alone")
    engine: Literal["eager", "static"] = Field("eager", description="rollout engine: 'static' is the CUDA-graph GPU engine")


class RewardTerm(_Strict):
    """One reward term; the run's reward is Σ weight·reward."""

    name: str = Field(
        ..., description="sentiment (VADER), embedding (MiniLM similarity), judge (LM yes/no log-odds), "
        "toxicity (penalty), classifier (a sequence-classification reward model), or any name added "
        "with ctrlalign.rewards.register_reward")
    weight: float = Field(1.0, description="coefficient of this term in the sum")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the reward class")

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        from .rewards.registry import REWARDS

        if v not in REWARDS:
            raise ValueError(f"unknown reward {v!r}; registered rewards: {', '.join(sorted(REWARDS))}")
        return v


class _ControllerBase(_Strict):
    """The controller, its hyperparameters (those that do not apply to it must stay unset; the
    unset ones take the controller's defaults), and how ``align`` keeps a response."""

    name: str = Field("aisp", description="which controller: " + ", ".join(CONTROLLERS))
    selection: Literal["best", "reservoir", "final"] | None = Field(
        None, description="which response to keep: best so far, the softmax reservoir, or the best of "
        "final_samples draws from the final proposal (unset: the controller's default)")
    final_samples: int = Field(1, ge=1, description="m, draws from the final proposal (selection 'final')")
    common_random_numbers: bool = Field(False, description="replay the same rollout random numbers every round")

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        if v not in CONTROLLERS:
            raise ValueError(f"unknown controller {v!r}; choose one of {', '.join(CONTROLLERS)}")
        return v

    @field_validator("*")
    @classmethod
    def _in_some_range(cls, v: Any, info: Any) -> Any:
        """A hyperparameter value must be allowed by at least one controller's declaration (the
        exact check against the chosen controller follows once every field is read)."""
        if v is None or info.field_name not in _HYPER_FIELDS:
            return v
        errors = []
        for c in CONTROLLERS.values():
            spec = c.spec()
            if info.field_name in spec.defaults:
                try:
                    return spec[info.field_name].check(v)
                except ConfigError as exc:
                    errors.append(str(exc))
        raise ValueError(errors[0])

    @model_validator(mode="after")
    def _applicable(self) -> _ControllerBase:
        try:
            self.hyperparameters()
            self.build()
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def hyperparameters(self) -> dict[str, Any]:
        """The set hyperparameters, checked against the controller's declaration."""
        spec = CONTROLLERS[self.name].spec()
        values = {k: getattr(self, k) for k in type(self).model_fields if k in _HYPER_FIELDS}
        return check_applicable(spec, values)

    def build(self, **overrides: Any) -> Controller:
        """The controller (``overrides``, e.g. ``num_iterations``, replace config values)."""
        return CONTROLLERS[self.name](**{**self.hyperparameters(), **overrides})

    def build_selection(self) -> Selection | None:
        """The configured selection (None: the controller's default)."""
        return make_selection(self.selection, self.final_samples)


_HYPER_FIELDS = config_fields(s.spec() for s in CONTROLLERS.values())

#: the ``controller`` section: fields derived from the controllers' declarations
ControllerConfig = create_model("ControllerConfig", __base__=_ControllerBase, __module__=__name__, **_HYPER_FIELDS)


#: starting configurations for ``ctrlalign align --preset NAME`` (sections of a run config)
PRESETS: dict[str, dict[str, Any]] = {
    "learning": {
        "help": "AISP on one control shared by all tokens, λ adaptive (ESS = n/2), greedy rollouts",
        "controller": {"name": "aisp", "space": "shared", "target_ess": 0.5, "sigma": 0.3, "num_samples": 16,
                       "num_iterations": 8},
        "model": {"greedy": True, "max_new_tokens": 32},
    },
    "paper": {
        "help": "AISP as published: one control per token, fixed λ = 0.3, α = 0.999, sampled rollouts",
        "controller": {"name": "aisp", "space": "per-token", "temperature": 0.3, "alpha": 0.999, "sigma": 0.3,
                       "num_samples": 16, "num_iterations": 8},
        "model": {"greedy": False, "max_new_tokens": 32},
    },
}


class RunSettings(_Strict):
    """Where results go and how the run is batched."""

    output: str = Field("runs/results.jsonl", description="JSONL file, one line per prompt, appended as prompts finish")
    seed: int = Field(0, description="base seed; each prompt's generators derive from (seed, prompt)")
    batch_prompts: int = Field(4, ge=1, description="D, prompts solved together")
    base: bool = Field(True, description="also sample and score the plain model's response for contrast")


class RunConfig(_Strict):
    """A whole run: prompts × model × reward × controller."""

    prompts: str | list[str] = Field(..., description="'mt-bench', a .txt/.jsonl path, or a list of prompts")
    limit: int | None = Field(None, ge=1, description="use only the first N prompts")
    model: ModelConfig = Field(default_factory=ModelConfig)
    reward: list[RewardTerm] = Field(default_factory=lambda: [RewardTerm(name="sentiment")],
                                     description="reward terms, summed with their weights")
    controller: ControllerConfig = Field(default_factory=ControllerConfig)
    run: RunSettings = Field(default_factory=RunSettings)

    @field_validator("reward", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        if isinstance(v, (dict, str)):
            v = [v]
        return [{"name": x} if isinstance(x, str) else x for x in v]

    @field_validator("reward")
    @classmethod
    def _nonempty(cls, v: list[RewardTerm]) -> list[RewardTerm]:
        if not v:
            raise ValueError("at least one reward term is required")
        return v

    def build_reward(self):
        """Σ weight·reward as a :class:`~ctrlalign.rewards.base.Reward`."""
        from .rewards import WeightedSum, get_reward

        terms = [(t.weight, get_reward(t.name, **t.options)) for t in self.reward]
        if len(terms) == 1 and terms[0][0] == 1.0:
            return terms[0][1]
        return WeightedSum(terms)

    def identity(self) -> dict[str, Any]:
        """The fields that determine results (everything but where results are written)."""
        d = self.model_dump(mode="json")
        d["run"].pop("output", None)
        d["run"].pop("batch_prompts", None)  # batching never changes a prompt's result
        d["model"].pop("device", None)
        return d


def config_hash(cfg: RunConfig) -> str:
    """A short SHA-256 of :meth:`RunConfig.identity` (stable key order)."""
    return hashlib.sha256(json.dumps(cfg.identity(), sort_keys=True).encode()).hexdigest()[:16]


def format_validation_error(exc: ValidationError, source: str = "config") -> str:
    """A pydantic ``ValidationError`` as readable lines, one per invalid field."""
    lines = [f"invalid {source}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not a field of this section)"
        val = err.get("input")
        shown = "" if isinstance(val, dict) else f" (got {val!r})"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping held by a YAML, JSON or TOML file (chosen by its suffix).

    Raises:
        ValueError: the file is missing, has another suffix, or does not hold a mapping.
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"config file not found: {p}")
    text = p.read_text(encoding="utf-8")
    if p.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    elif p.suffix == ".json":
        data = json.loads(text)
    elif p.suffix == ".toml":
        import tomllib

        data = tomllib.loads(text)
    else:
        raise ValueError(f"config file {p} must end in .yaml, .yml, .json or .toml")
    if not isinstance(data, dict):
        raise ValueError(f"config file {p} must hold a mapping at the top level")
    return data


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate a YAML/JSON/TOML config file.

    Raises:
        ValueError: with one line per bad field, naming it (``controller.sigma: ...``).
    """
    p = Path(path)
    data = read_config_file(p)
    for key, value in (overrides or {}).items():
        section, _, field = key.partition(".")
        data.setdefault(section, {})[field] = value
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ValueError(format_validation_error(exc, f"config {p}")) from None
