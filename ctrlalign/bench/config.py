"""Benchmark configuration (pydantic; every field documented; unknown keys rejected).

A YAML/JSON/TOML file for ``ctrlalign bench CONFIG``::

    name: matched-budget
    prompts: mt-bench
    require_reference: true        # keep prompts that have a reference answer
    limit: 16
    model: {name: default, max_new_tokens: 32}
    reward:                        # the optimised reward
      - {name: embedding, options: {references: from_prompts}}
    judge:                         # a held-out reward, never optimised
      - {name: judge}
    budgets: [8, 16, 32, 64]
    seeds: [0, 1, 2]
    controllers:                   # each entry: a controller section, plus an optional space section
      - {label: bon-plain, name: bon, sigma: 0}
      - {label: bon-prior, name: bon, sigma: 0.55, space: {name: per-token, horizon: 32}}
      - {label: aisp, name: aisp, sigma: 0.55, temperature: 0.1, alpha: 0.99}
      - {label: aisp-subspace, name: aisp, sigma: 1.0, target_ess: 0.5, space: {name: subspace, rank: 16}}
    primary: aisp
    baselines: [bon-plain, bon-prior]

``references: from_prompts`` in a reward's options is replaced by the prompt set's reference
answers (a dict prompt → reference). A ``sweep`` section adds one AISP entry per point of a
σ² × λ × α grid.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from .._checks import ConfigError
from ..build import FROM_PROMPTS
from ..config import (
    SPACE_KEYS_MOVED,
    ControllerConfig,
    ModelConfig,
    RewardTerm,
    SpaceConfig,
    format_validation_error,
    read_config_file,
    reward_terms,
    space_section,
)
from ..controllers import Controller

__all__ = ["FROM_PROMPTS", "NOT_IDENTITY", "BenchConfig", "BenchController", "SweepGrid", "bench_identity",
           "load_bench_config"]



class _Strict(BaseModel):
    """Unknown keys refused; numbers and booleans strict: ``true`` is not an integer, ``1`` is
    not a boolean, ``"3"`` is not a number, ``2.0`` is not an integer (an integer is a float)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class BenchController(ControllerConfig):
    """One controller of the comparison: a controller section (without ``num_iterations``: k =
    N / n is set per budget N by the harness) and its own control space section."""

    moved: ClassVar[dict[str, str]] = {
        **{key: f"it belongs to this entry's control space: space: {{name: ..., {key}: ...}}"
           for key in SPACE_KEYS_MOVED if key != "space"}}
    reserved: ClassVar[dict[str, str]] = {"num_iterations": "the bench sets k = N / n for each budget N; remove it"}

    label: str | None = Field(None, description="name in tables and plots (default: the controller name)")
    name: str = Field(..., description="which controller: aisp, mppi, bon, softmax, cem (read off at every "
                      "budget), smc, speculative-rejection, receding-horizon (closed loop: run once, at the cost "
                      "its own options set), or any added with register_controller")
    space: SpaceConfig = Field(default_factory=SpaceConfig, description="this entry's control space and its "
                               "options, horizon τ included (default per-token over all max_new_tokens)")
    greedy: bool = Field(False, description="decode this entry greedily (the response is a function of the "
                         "controls); the model's own sampling otherwise")

    _space_name = field_validator("space", mode="before")(staticmethod(space_section))

    @property
    def key(self) -> str:
        """The name used in tables: ``label`` if set, else the controller name."""
        return self.label or self.name

    def build(self, num_iterations: int | None = None, **overrides: Any) -> Controller:  # type: ignore[override]
        """The controller, with k = ``num_iterations`` when given."""
        if num_iterations is not None:
            overrides["num_iterations"] = num_iterations
        return super().build(**overrides)

    @property
    def num_samples_used(self) -> int | None:
        """n of the built controller (the config's value, else the controller's default; None
        for a controller without one)."""
        return getattr(self.instance, "num_samples", None)

    @property
    def sigma_used(self) -> float:
        """σ of the built controller (0 for one without control noise, e.g. a closed-loop one)."""
        return getattr(self.instance, "sigma", 0.0)


class SweepGrid(_Strict):
    """An AISP hyperparameter grid: one entry per (σ², λ, α)."""

    sigma2: list[float] = Field([0.1, 0.3, 0.5, 1.0], description="σ² values (σ = √σ²)")
    temperature: list[float] = Field([0.1, 0.3, 1.0], description="λ values")
    alpha: list[float] = Field([0.0, 0.99, 0.999], description="α values")
    num_samples: int = Field(8, ge=1, description="n for every grid point")
    space: SpaceConfig = Field(default_factory=SpaceConfig, description="the control space of every grid point, "
                               "horizon τ included (default per-token over all max_new_tokens)")

    _space_name = field_validator("space", mode="before")(staticmethod(space_section))

    @field_validator("sigma2", "temperature")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if not v or any(x <= 0 for x in v):
            raise ValueError("needs at least one value, all > 0")
        return v

    @field_validator("alpha")
    @classmethod
    def _unit(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 <= x <= 1 for x in v):
            raise ValueError("needs at least one value, all in [0, 1]")
        return v

    _entries: list[BenchController] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _forget_entries(self) -> SweepGrid:
        """A changed grid builds its entries anew."""
        self._entries = None
        return self

    def controllers(self) -> list[BenchController]:
        """One AISP entry per (σ², λ, α) of the grid (validated, and built, once)."""
        if self._entries is not None:
            return self._entries
        out = []
        for s2, lam, a in itertools.product(self.sigma2, self.temperature, self.alpha):
            out.append(BenchController(
                label=f"aisp[s2={s2:g},lam={lam:g},a={a:g}]", name="aisp", num_samples=self.num_samples,
                sigma=math.sqrt(s2), temperature=lam, alpha=a, space=self.space))
        self._entries = out
        return out


class BenchConfig(_Strict):
    """A matched-budget benchmark: controllers × budgets N × seeds × prompts."""

    name: str = Field("bench", description="run name; prefixes figure files")
    prompts: str | list[str] = Field("mt-bench", description="'mt-bench', a .txt/.jsonl path, or a list of prompts")
    require_reference: bool = Field(False, description="keep only prompts that have a reference answer")
    offset: int = Field(0, ge=0, description="skip the first prompts (after filtering)")
    limit: int | None = Field(None, ge=1, description="use at most this many prompts (after offset)")
    model: ModelConfig = Field(default_factory=ModelConfig, description="policy model and sampling")
    reward: list[RewardTerm] = Field(..., description="the optimised reward, Σ weight·term")
    judge: list[RewardTerm] = Field(default_factory=list,
                                    description="held-out reward(s) scoring the chosen responses; never optimised")
    controllers: list[BenchController] = Field(default_factory=list, description="the compared controllers")
    sweep: SweepGrid | None = Field(None, description="optional AISP grid appended to controllers")
    budgets: list[int] = Field([8, 16, 32, 64], description="budgets N (reward calls per prompt)")
    seeds: list[int] = Field([0, 1, 2], description="base seeds; results are paired by (prompt, seed)")
    batch_prompts: int = Field(8, ge=1, description="D, prompts decoded together (never changes a result)")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (None: torch's default). On a "
                                    "shared CPU, 1 avoids thread oversubscription, which slowed decoding ~5x here")
    coherence: bool = Field(True, description="embed prompt and response with MiniLM for the coherence metric")
    heldout: bool = Field(False, description="score every kept response with the held-out metrics nothing "
                          "optimises: fluency (mean token log-likelihood under another packaged LM than the "
                          "policy), coherence with MPNet (not the reward's MiniLM) and the published diversity")
    primary: str | None = Field(None, description="label of the controller compared against the baselines")
    matched_reference: str | None = Field(None, description="label of the plain Best-of-N entry whose reward "
                                          "curve (as a function of N) every controller is read out against at "
                                          "matched decoded tokens and matched reward calls (default: the first "
                                          "entry 'bon' with σ = 0)")
    baselines: list[str] = Field(default_factory=list, description="labels of the baselines for paired differences")
    ci_method: Literal["t", "bootstrap"] = Field("bootstrap", description="CI: cluster bootstrap over prompts, or t over prompt means")
    output: str = Field("benchmarks/results/bench.jsonl", description="results file: a JSON Lines store, one line "
                        "appended per finished (controller, seed, prompt batch) run (a file of the older one-object "
                        "JSON format is still read, and rewritten as a store when a run resumes it)")
    figures: str | None = Field("docs/img", description="folder for PNG figures (None: none)")
    tables: str | None = Field(None, description="markdown file for the tables (None: <output>.md)")

    @field_validator("reward", "judge", mode="before")
    @classmethod
    def _reward_terms(cls, v: Any) -> Any:
        return reward_terms(v)

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v: list[int]) -> list[int]:
        if not v or any(int(b) < 1 for b in v):
            raise ValueError("budgets must be a non-empty list of positive integers")
        return sorted({int(b) for b in v})

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v or len(set(v)) != len(v):
            raise ValueError("seeds must be a non-empty list of distinct integers")
        return v

    @model_validator(mode="after")
    def _check(self) -> BenchConfig:
        entries = self.all_controllers()
        if not entries:
            raise ValueError("no controllers: give 'controllers' and/or 'sweep'")
        keys = [c.key for c in entries]
        dup = {k for k in keys if keys.count(k) > 1}
        if dup:
            raise ValueError(f"controller labels must be unique, repeated: {sorted(dup)}")
        from ..rewards.registry import REWARDS

        unscored = [t.name for t in self.reward if not getattr(REWARDS[t.name], "scores_prefixes", True)]
        for c in entries:
            space = None if c.space == SpaceConfig() else {"name": c.space.name, **c.space.options()}
            try:
                c.instance.check_setting(space=space, greedy=c.greedy or self.model.greedy, unscored_prefixes=unscored,
                                         open_loop_options=c.open_loop_options())
            except ConfigError as exc:
                raise ValueError(f"controller {c.key!r}: {exc}") from None
            if not c.instance.anytime:
                continue  # its own options fix its cost: the budgets do not apply
            if c.selection == "final":
                raise ValueError(f"controller {c.key!r}: selection 'final' draws after the last round, so the "
                                 "bench's anytime read-out at every budget cannot use it; use 'best' or 'reservoir'")
            n = c.num_samples_used
            bad = [b for b in self.budgets if b % n]
            if bad:
                raise ValueError(f"controller {c.key!r}: budgets {bad} are not multiples of num_samples={n}")
        refs = [self.matched_reference] if self.matched_reference else []
        for lab in ([self.primary] if self.primary else []) + list(self.baselines) + refs:
            if lab not in keys:
                raise ValueError(f"{lab!r} (primary/baselines) is not a controller label; labels: {keys}")
        return self

    def all_controllers(self) -> list[BenchController]:
        """The listed controllers followed by the sweep's entries (if any)."""
        return list(self.controllers) + (self.sweep.controllers() if self.sweep is not None else [])


def load_bench_config(path: str | Path) -> BenchConfig:
    """Read and validate a YAML/JSON/TOML bench config.

    Raises:
        ConfigError: the file cannot be read or parsed, or one line per bad field, naming it.
    """
    p = Path(path)
    data = read_config_file(p)
    try:
        return BenchConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"bench config {p}")) from None


#: config fields that change no result: results written under other values are resumed (the
#: controllers are compared run by run, by label, with the settings each run was made with)
NOT_IDENTITY = ("name", "output", "figures", "tables", "limit", "seeds", "primary", "baselines", "controllers",
                "sweep", "matched_reference")


def bench_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The fields of a bench config (a :class:`BenchConfig` dumped to JSON) that determine its
    results: every field but :data:`NOT_IDENTITY`."""
    return {k: v for k, v in config.items() if k not in NOT_IDENTITY}
