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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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


class ControllerConfig(_Strict):
    """The controller and its hyperparameters (those that do not apply to it must stay unset)."""

    name: Literal["aisp", "mppi", "bon", "softmax", "cem"] = Field("aisp", description="which controller")
    num_samples: int = Field(8, ge=1, description="n, samples per prompt per iteration")
    num_iterations: int = Field(4, ge=1, description="k, iterations; budget n·k reward calls per prompt")
    sigma: float = Field(0.3, ge=0, description="σ, control noise std (BoN may use 0: the plain model)")
    horizon: int | None = Field(None, ge=1, description="τ, controlled tokens (None: max_new_tokens)")
    temperature: float | None = Field(None, gt=0, description="λ (aisp, mppi, softmax); default 0.3")
    alpha: float | None = Field(None, ge=0, le=1, description="α (aisp); default 0.999")
    likelihood_ratio: float | None = Field(None, ge=0, le=1, description="γ (mppi); default 1")
    step_size: float | None = Field(None, gt=0, le=1, description="β (mppi, cem); default 1")
    elite_fraction: float | None = Field(None, gt=0, le=1, description="ρ (cem); default 0.25")
    refit_std: bool | None = Field(None, description="cem: refit the proposal scale")

    _ALLOWED = {
        "aisp": {"temperature", "alpha"},
        "mppi": {"temperature", "likelihood_ratio", "step_size"},
        "bon": set(),
        "softmax": {"temperature"},
        "cem": {"step_size", "elite_fraction", "refit_std"},
    }

    def build(self):
        """Instantiate the controller (raises naming a field that does not apply)."""
        from .controllers import CONTROLLERS

        extras = {k for k in ("temperature", "alpha", "likelihood_ratio", "step_size", "elite_fraction", "refit_std")
                  if getattr(self, k) is not None}
        bad = extras - self._ALLOWED[self.name]
        if bad:
            raise ValueError(f"controller.{sorted(bad)[0]} does not apply to controller '{self.name}' "
                             f"(it takes: {', '.join(sorted(self._ALLOWED[self.name])) or 'no extra fields'})")
        kw: dict[str, Any] = dict(num_samples=self.num_samples, num_iterations=self.num_iterations,
                                  sigma=self.sigma, horizon=self.horizon)
        kw.update({k: getattr(self, k) for k in extras})
        return CONTROLLERS[self.name](**kw)


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
        msg = err["msg"]
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
