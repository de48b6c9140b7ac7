"""Run configuration, validated with pydantic: every field documented, unknown keys rejected.

A config file (YAML, JSON or TOML) has these sections; only ``prompts`` is required::

    prompts: mt-bench          # a packaged set, a .txt/.jsonl file, a list of strings, or
                               # {path: data.csv, text_field: question} (JSON/JSONL/CSV/Parquet)
    limit: 8                   # optional: the first N prompts
    model:
      name: default            # the packaged SmolLM2-135M-Instruct, or an HF id / local path
      max_new_tokens: 32
    reward:
      - {name: sentiment, weight: 1.0}
      - {name: toxicity, weight: 0.5}
    controller:                # open loop: aisp, mppi, bon, softmax, cem; closed loop (on partial
      name: aisp               # responses): smc, speculative-rejection, receding-horizon (its
      num_samples: 8           # inner: {name: aisp, ...} runs in every window)
      num_iterations: 4
      sigma: 0.3
      temperature: 0.1
      alpha: 0.99
    space:                     # the control space and its options (default: per-token, the paper's)
      name: subspace
      rank: 32
      shared: true
      horizon: 32              # τ, controlled tokens (unset: all max_new_tokens)
    run:
      output: runs/mt-bench.jsonl
      seed: 0
      batch_prompts: 4

Every value is checked before anything is loaded or written; a bad one is reported as a
:class:`~ctrlalign._checks.ConfigError` (a ``ValueError``) naming the field, the value and what
is allowed. The ``controller`` and ``space`` sections are resolved when the config is validated,
by looking the name up in :data:`~ctrlalign.controllers.CONTROLLERS` or
:data:`~ctrlalign.spaces.SPACES` and building the component once from its declaration
(:class:`~ctrlalign.sections.ComponentSection`). Files that cannot be read (missing, a
directory, not UTF-8, a YAML/JSON/TOML syntax error with its line and column) are reported the
same way.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ._checks import ConfigError
from .controllers import CONTROLLERS, Controller
from .data import PromptSource, check_text, parse_json, read_text_file
from .declare import Registry
from .sections import ComponentSection
from .selection import Selection, make_selection
from .spaces import SPACES, ControlSpace

__all__ = [
    "MAX_SEED",
    "DEFAULT_PRESET",
    "PRESETS",
    "SPACE_KEYS_MOVED",
    "ControllerConfig",
    "ModelConfig",
    "RewardTerm",
    "RunConfig",
    "RunSettings",
    "SpaceConfig",
    "apply_overrides",
    "config_hash",
    "format_validation_error",
    "load_config",
    "read_config_file",
    "reward_terms",
    "space_section",
    "validate_config",
]


class _Strict(BaseModel):
    """Unknown keys refused; numbers and booleans strict: ``true`` is not an integer, ``1`` is
    not a boolean, ``"3"`` is not a number, ``2.0`` is not an integer (an integer is a float)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class ModelConfig(_Strict):
    """The policy model and how it samples."""

    name: str = Field("default", description="'default' (packaged SmolLM2-135M-Instruct), an HF id or a local path")
    device: str = Field("cpu", description="torch device, e.g. 'cpu', 'cuda', 'cuda:1'")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32", description="weights and activations dtype; 'auto': bfloat16 where the device computes it natively "
        "(CUDA with bfloat16, a CPU with AVX512-BF16 or AMX), float32 elsewhere")
    max_new_tokens: int = Field(32, ge=1, le=4096, description="T, tokens generated per response")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (1.0 is the method's dynamics)")
    top_k: int | None = Field(None, ge=1, description="top-k filter (None: off)")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus filter (None: off)")
    chat_template: bool = Field(True, description="apply the tokenizer's chat template when it has one")
    system_prompt: str | None = Field(None, description="optional system message for chat templates")
    greedy: bool = Field(False, description="greedy decoding of the controlled logits: the response is a function "
                         "of the controls alone")
    engine: Literal["eager", "static", "llamacpp"] = Field(
        "eager", description="rollout engine: 'static' is the CUDA-graph GPU engine, 'llamacpp' the llama.cpp CPU "
        "engine on the packaged GGUF (needs llama-cpp-python)")
    batch_invariant: bool | None = Field(
        None, description="decode each prompt on its own rows, so that a prompt's result is bitwise the same "
        "whatever shares its batch (eager engine only; unset: on for the eager engine, as in the Python API, "
        "off for the static one, which promises equality in distribution). On CPU: x0.54 tokens/s at n = 8, "
        "x0.86 at n = 32")

    trust_remote_code: bool = Field(False, description="allow a model whose architecture is defined by code in its "
                                    "repository (transformers' trust_remote_code); only for models you trust")

    @model_validator(mode="after")
    def _invariance_needs_eager(self) -> ModelConfig:
        if self.batch_invariant and self.engine != "eager":
            raise ValueError(f"batch_invariant applies to the eager engine only, not engine {self.engine!r}")
        return self

    @field_validator("name")
    @classmethod
    def _nonempty_name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be 'default', a Hugging Face id or a local path, got an empty string")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        """The spelling of a torch device (whether it exists here is checked when the model is built)."""
        import torch

        try:
            torch.device(v)
        except (RuntimeError, ValueError):
            raise ValueError(f"{v!r} is not a torch device; use e.g. 'cpu', 'cuda', 'cuda:1' or 'mps'") from None
        return v

    @field_validator("system_prompt")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        return None if v is None else check_text("system_prompt", v)


class RewardTerm(_Strict):
    """One reward term; the run's reward is Σ weight·reward."""

    name: str = Field(
        ..., description="sentiment (VADER), embedding (MiniLM similarity), judge (LM yes/no log-odds), "
        "toxicity (penalty), classifier (a sequence-classification reward model), or any name added "
        "with ctrlalign.rewards.register_reward")
    weight: float = Field(1.0, description="coefficient of this term in the sum (finite)")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the reward class")

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        from .rewards.registry import REWARDS

        if v not in REWARDS:
            raise ValueError(f"unknown reward {v!r}; registered rewards: {', '.join(sorted(REWARDS))}")
        return v

    @field_validator("weight")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number (not NaN or inf)")
        return v


def reward_terms(v: Any) -> Any:
    """A reward section in any form it may take — a name (``"sentiment"``), one term (a dict), or
    a list of names and terms — as a list of term dicts; anything else is returned unchanged, for
    pydantic to reject naming the field."""
    if isinstance(v, (dict, str)):
        v = [v]
    if not isinstance(v, list):
        return v
    return [{"name": x} if isinstance(x, str) else x for x in v]


#: where the old controller-level space keys went (refused with this message)
SPACE_KEYS_MOVED = {
    key: f"the control space is a section of its own beside the controller: space: {{name: ..., {key}: ...}} "
         f"(command line: --{key.replace('_', '-')})"
    for key in ("horizon", "block_size", "rank")
}
SPACE_KEYS_MOVED["space"] = ("the control space is a section of its own beside the controller: space: {name: subspace, "
                             "rank: 32, horizon: 32} (command line: --space NAME and its options)")


class SpaceConfig(ComponentSection):
    """The control space (:mod:`ctrlalign.spaces`): its name and its declared options, the
    horizon τ included (e.g. ``{name: subspace, rank: 32, shared: true, horizon: 32}``); a bare
    name is short for ``{name: NAME}``."""

    registry: ClassVar[Registry] = SPACES
    section: ClassVar[str] = "space"

    name: str = Field("per-token", description="which space (per-token is the paper's); the names of "
                      "ctrlalign.spaces.SPACES, or any added with register_space")

    def build(self, **overrides: Any) -> ControlSpace:
        """The (unbound) space."""
        return super().build(**overrides)


def space_section(value: Any) -> Any:
    """A bare space name as the section ``{name: NAME}`` (other values pass through)."""
    return {"name": value} if isinstance(value, str) else value


class ControllerConfig(ComponentSection):
    """The controller, its hyperparameters (those that do not apply to it are refused; the
    unset ones take the controller's defaults), and how ``align`` keeps a response."""

    # numbers and booleans strict, as in _Strict (the hyperparameters are checked strictly by
    # their declarations)
    model_config = ConfigDict(extra="allow", validate_assignment=True, strict=True)

    registry: ClassVar[Registry] = CONTROLLERS
    section: ClassVar[str] = "controller"
    moved: ClassVar[dict[str, str]] = SPACE_KEYS_MOVED

    name: str = Field("aisp", description="which controller: aisp, mppi, bon, softmax, cem (open loop), smc, "
                      "speculative-rejection, receding-horizon (closed loop: on partial responses), or any added "
                      "with register_controller")
    selection: Literal["best", "reservoir", "final"] | None = Field(
        None, description="which response to keep: best so far, the softmax reservoir, or the best of "
        "final_samples draws from the final proposal (unset: the controller's default)")
    final_samples: int = Field(1, ge=1, description="m, draws from the final proposal (selection 'final')")
    common_random_numbers: bool = Field(False, description="replay the same rollout random numbers every round")

    def hyperparameters(self) -> dict[str, Any]:
        """The set hyperparameters, as the built controller holds them (checked values; a
        nested component as the object; :meth:`options` gives them as plain data)."""
        return {k: getattr(self.instance, k) for k in self.options()}

    def open_loop_options(self) -> list[str]:
        """The options of open-loop runs set here (``controller.selection``, ...), for
        :meth:`~ctrlalign.controllers.base.Controller.check_setting`."""
        return [f"{self.section}.{k}" for k, unset in (("selection", None), ("final_samples", 1),
                                                       ("common_random_numbers", False)) if getattr(self, k) != unset]

    def build(self, **overrides: Any) -> Controller:
        """The controller (``overrides``, e.g. ``num_iterations``, replace config values)."""
        return super().build(**overrides)

    def build_selection(self) -> Selection | None:
        """The configured selection (None: the controller's default)."""
        return make_selection(self.selection, self.final_samples)


def _regrowth_preset(rows: int, help: str) -> dict[str, Any]:
    """Speculative rejection from ``rows`` sampled responses at T = 32: at tokens 8, 16 and 24 the best
    quarter of the prefixes is kept and forked back to ``rows`` (32·rows decoded tokens)."""
    return {"help": help,
            "controller": {"name": "speculative-rejection", "num_samples": rows,
                           "schedule": [[t, 0.25, 1.0] for t in (8, 16, 24)]},
            "model": {"greedy": False, "max_new_tokens": 32, "dtype": "auto"}}


#: starting configurations for ``ctrlalign align --preset NAME`` (sections of a run config)
PRESETS: dict[str, dict[str, Any]] = {
    "speculative": _regrowth_preset(
        64, "speculative rejection with regrowth: 64 sampled responses; after 8, 16 and 24 tokens the 16 best "
        "prefixes by prefix reward are kept and forked back to 64 rows, the best finished one returned (2,048 "
        "tokens): closed loop, measured on SmolLM2 to beat Best-of-128 with half its tokens on three rewards "
        "(tutorial 7, BENCHMARKS.md); bfloat16 where the device computes it natively (half the time on CPU, "
        "benchmarks/cpu_dtype.py)"),
    "fast": _regrowth_preset(
        32, "the default at half the rows: 32 sampled responses, the 8 best prefixes forked back to 32 after 8, "
        "16 and 24 tokens (1,024 tokens): measured on SmolLM2 to reach Best-of-128's reward on average with a "
        "quarter of its tokens (BENCHMARKS.md)"),
    "learning": {
        "help": "AISP in the head's top-32 singular directions (shared by all tokens), λ adaptive "
                "(ESS = n/4), greedy rollouts: the configuration measured to learn (tutorial 6)",
        "controller": {"name": "aisp", "target_ess": 0.25, "sigma": 1.0, "num_samples": 16, "num_iterations": 8},
        "space": {"name": "subspace", "rank": 32},
        "model": {"greedy": True, "max_new_tokens": 32},
    },
    "paper": {
        "help": "AISP as published: one control per token, fixed λ = 0.3, α = 0.999, sampled rollouts",
        "controller": {"name": "aisp", "temperature": 0.3, "alpha": 0.999, "sigma": 0.3, "num_samples": 16,
                       "num_iterations": 8},
        "space": {"name": "per-token"},
        "model": {"greedy": False, "max_new_tokens": 32},
    },
}


#: the preset ``ctrlalign align`` starts from when none is named
DEFAULT_PRESET = "speculative"

#: seeds are 64-bit: 0 … 2⁶⁴ − 1
MAX_SEED = 2**64 - 1


class RunSettings(_Strict):
    """Where results go and how the run is batched."""

    output: str = Field("runs/results.jsonl", description="JSONL file, one line per prompt, appended as prompts finish")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="base seed, 0 … 2⁶⁴−1; each prompt's generators derive "
                      "from (seed, prompt)")
    batch_prompts: int = Field(4, ge=1, description="D, prompts solved together")
    base: bool = Field(True, description="also sample and score the plain model's response for contrast")
    save_candidates: bool = Field(False, description="also keep every one of the n·k candidates (text, reward, "
                                  "iteration, log-probabilities) in <output stem>.candidates.jsonl")

    @field_validator("output")
    @classmethod
    def _output(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a file path, got an empty string")
        return v


class RunConfig(_Strict):
    """A whole run: prompts × model × reward × controller."""

    prompts: str | list[str] | PromptSource = Field(
        ..., description="'mt-bench', a .txt/.jsonl path, a list of prompts, or a data file with a chosen text "
        "field ({path: data.csv, text_field: question}; JSON, JSONL, CSV or Parquet)")
    limit: int | None = Field(None, ge=1, description="use only the first N prompts (raising it later continues "
                              "the run)")
    model: ModelConfig = Field(default_factory=ModelConfig)
    reward: list[RewardTerm] = Field(default_factory=lambda: [RewardTerm(name="sentiment")],
                                     description="reward terms, summed with their weights")
    controller: ControllerConfig = Field(default_factory=ControllerConfig)
    space: SpaceConfig = Field(default_factory=SpaceConfig, description="the control space θ lives in, with its "
                               "horizon τ (default per-token over all max_new_tokens, the paper's)")
    run: RunSettings = Field(default_factory=RunSettings)

    _space_name = field_validator("space", mode="before")(staticmethod(space_section))

    @field_validator("reward", mode="before")
    @classmethod
    def _reward_terms(cls, v: Any) -> Any:
        return reward_terms(v)

    @field_validator("reward")
    @classmethod
    def _nonempty(cls, v: list[RewardTerm]) -> list[RewardTerm]:
        if not v:
            raise ValueError("at least one reward term is required")
        return v

    @field_validator("prompts")
    @classmethod
    def _prompt_texts(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not v:
                raise ValueError("the list of prompts is empty")
            for i, text in enumerate(v):
                check_text(f"prompt {i}", text, nonempty=True)
        elif isinstance(v, str) and not v.strip():
            raise ValueError("must name a packaged set, a file, or list prompts; got an empty string")
        return v

    @model_validator(mode="after")
    def _controller_fits(self) -> RunConfig:
        """The controller can work with this space, decoding and reward (e.g. a closed-loop
        controller refuses a control space, greedy decoding or a reward without prefix scores),
        refused here, before any model work."""
        from .rewards.registry import REWARDS

        default = SpaceConfig()
        space = None if self.space == default else {"name": self.space.name, **self.space.options()}
        unscored = [t.name for t in self.reward if not getattr(REWARDS[t.name], "scores_prefixes", True)]
        extra = self.controller.open_loop_options() + (["run.save_candidates"] if self.run.save_candidates else [])
        self.controller.instance.check_setting(space=space, greedy=self.model.greedy, unscored_prefixes=unscored,
                                               open_loop_options=extra)
        return self

    def identity(self) -> dict[str, Any]:
        """The fields that determine each prompt's result: model (not its device), reward,
        controller, seed and whether the plain model is sampled.

        Left out: where and how results are written (output, batching, candidates) and *which*
        prompts are run (``prompts``, ``limit``): results are keyed by prompt id and content,
        so adding prompts or raising ``limit`` continues a run, and a prompt whose text changed
        is caught by the runner, not by this hash.
        """
        d = self.model_dump(mode="json")
        for key in ("prompts", "limit"):
            d.pop(key, None)
        for key in ("output", "batch_prompts", "save_candidates"):
            d["run"].pop(key, None)
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
        shown = "" if isinstance(val, dict) or msg.endswith(f"got {val!r}") else f" (got {val!r})"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def _parse(p: Path, text: str) -> Any:
    """Parse YAML/JSON/TOML by suffix; a syntax error is a ConfigError with line and column."""
    if p.suffix in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"config file {p}: YAML syntax error{where}: {problem}") from None
    if p.suffix == ".json":
        return parse_json(text, f"config file {p}")
    if p.suffix == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p}: TOML syntax error: {exc}") from None
    raise ConfigError(f"config file {p} must end in .yaml, .yml, .json or .toml, got {p.suffix or 'no suffix'!r}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping held by a YAML, JSON or TOML file (chosen by its suffix).

    Raises:
        ConfigError: the file is missing, a directory, not UTF-8, has another suffix, has a
            syntax error (with line and column), or does not hold a mapping.
    """
    p = Path(path)
    if p.suffix not in (".yaml", ".yml", ".json", ".toml"):
        raise ConfigError(f"config file {p} must end in .yaml, .yml, .json or .toml, got "
                          f"{p.suffix or 'no suffix'!r}")
    data = _parse(p, read_text_file(p, "config file"))
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``data`` with dotted keys set (``{"run.seed": 3, "limit": 5}``); a section that is not a
    mapping is reported, not overwritten."""
    for key, value in overrides.items():
        *sections, field = key.split(".")
        node = data
        for sec in sections:
            node = node.setdefault(sec, {})
            if not isinstance(node, dict):
                raise ConfigError(f"cannot set {key}: {sec} is a {type(node).__name__} in the config, not a section")
        node[field] = value
    return data


def validate_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    """A mapping validated into a :class:`RunConfig`.

    Raises:
        ConfigError: one line per bad field, naming it (``controller.sigma: ...``).
    """
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate a YAML/JSON/TOML config file; ``overrides`` set dotted keys first.

    Raises:
        ConfigError: (a ``ValueError``) the file cannot be read or parsed, or one line per bad
            field, naming it (``controller.sigma: ...``).
    """
    p = Path(path)
    data = apply_overrides(read_config_file(p), overrides or {})
    return validate_config(data, f"config {p}")
