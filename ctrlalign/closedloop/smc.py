r"""Twisted sequential Monte Carlo over partial responses.

Target: the same tilted law as AISP's q*, in token space,

.. math:: \pi^*(y) \propto p(y)\,\exp\!\big(r(x, y)/\lambda\big),\qquad
          Z = \mathbb E_{y\sim p}\big[e^{r(x,y)/\lambda}\big].

n particles per prompt are advanced b tokens at a time from a proposal q: the base model
(``controls=None``) or a fixed pre-logit control V (for example a mean AISP learned), whose
token law :math:`q(y_t\mid y_{<t}) = \mathrm{softmax}(W(z_t+v_t)+b)_{y_t}` is exact given the
prefix. At each checkpoint t the weights take the block's likelihood ratio and the change of
twist :math:`\psi_t = r(x, y_{1:t})/\lambda_t` (the reward's prefix score):

.. math:: \log w \mathrel{+}= \sum_{s\in\text{block}} \big[\log p(y_s\mid\cdot) - \log q(y_s\mid\cdot)\big]
          + \psi_t - \psi_{t_\text{prev}},\qquad \psi_0 = 0,\ \psi_T = r(x, y)/\lambda .

The twist telescopes, so the final weights are :math:`p(y)e^{r/\lambda}/q(y)` whatever the
:math:`\lambda_t` (fixed, or chosen per prompt and checkpoint so that the ESS is a target
fraction of n). When the ESS falls below κ·n the particles are resampled
(:mod:`ctrlalign.resampling`), each new particle continuing its ancestor's prefix (and control),
and the weights reset to equal; the estimate

.. math:: \hat Z = \prod_{\text{resamplings}} \overline{w}\;\cdot\;\overline{w_\text{final}}

is unbiased, :math:`\mathbb E[\hat Z] = Z`. The read-out keeps the best final particle by its
full reward (``"argmax"``, Best-of-N's rule) or draws one with probability ∝ w (``"weight"``:
an approximate sample of π*).

Finished particles: the archive (``archive=True``). A row that has emitted the end token
before T is *finished*: its response is complete and it decodes nothing more (no tokens, no
p/q factor). Kept in the particle set it is absorbing, so the target stays right, but
resampling duplicates it into rows that decode nothing and leaves the alive particles fewer
offspring. So at every intermediate checkpoint :math:`t_k` (when resampling is on, κ > 0)
finished rows leave the resampling. Write, per prompt: :math:`\ell_i = \log w_i` the
log-weights, (D, n); :math:`S_k` the running scale, (D,), the product of the weight means
carried into Ẑ so far (:math:`S_0 = 1`; ``meta["log_scale"]`` holds the final log S); and the
*mass* of row i, its share of the estimate, (D, n),

.. math:: m_i = S_k\,w_i/n .

A finished row is scored with the **full** reward (a full call, not a prefix call), so its
twist is already the final one, :math:`\psi = r(x, y)/\lambda`, and its weight is final. Split
the rows into finished F and alive A:

* **archive**: each i ∈ F moves, with its mass :math:`m_i`, full reward and response, to the
  prompt's archive;
* **refill**: the n rows are redrawn among A only, with probabilities
  :math:`w_i/\sum_{A} w` (the resampling scheme on ℓ with −inf on F), every offspring with
  weight :math:`\sum_A w/n`: :math:`S_{k} \leftarrow S_k\sum_A w/n` and ℓ ← 0.

Unbiasedness. For any test function f of the path, the resampler is unbiased (each i ∈ A has
:math:`\mathbb E[\#\text{offspring}_i] = n w_i/\sum_A w`), so

.. math:: \mathbb E\Big[\sum_{\text{offspring } o} m_o f(y_o)\,\Big|\,\text{past}\Big]
          = \sum_{i\in A} \frac{n w_i}{\sum_A w}\cdot\frac{S_k\sum_A w}{n^2} f(y_i)
          = \sum_{i\in A} m_i f(y_i),

and the archived rows keep their masses: the random measure
:math:`M_k = \sum_{\text{archive}} m\,\delta_y + \sum_{\text{rows}} m\,\delta_y` has the same
expectation after the checkpoint as before it. Reweighting keeps the standard SMC identity
:math:`\mathbb E[M_k(f)] = \sum p(y_{1:t_k})\,e^{\psi_k(y_{1:t_k})} f(y_{1:t_k})` over the paths
at :math:`t_k` (responses finished by :math:`t_k`, with :math:`\psi = r/\lambda`, and alive
prefixes); at T every path is a response, :math:`\mathbb E[M_T(f)] = Z\,\mathbb E_{\pi^*}[f]`.
With f = 1 the estimate

.. math:: \hat Z = \sum_{\text{archive}} m \;+\; S_K\,\overline{w_\text{final}}

(the archived mass plus the final rows' mass) is unbiased, :math:`\mathbb E[\hat Z] = Z`, and
the archive plus the final rows, weighted by their masses, approximate π*. A prompt whose rows
are all finished stops resampling (its rows stay, with their weights and masses, and are not
scored again); a prompt with no finished row follows the ESS rule exactly as without the archive
(the same arithmetic, and the resampler draws the same uniforms whatever the weights, so the
same draws); a prompt with finished and alive rows is refilled whatever its ESS (keeping a
finished row until the next resampling would leave its row idle). κ = 0 never resamples, so
nothing is archived. The read-outs run over the archive ∪ the final rows: ``"argmax"`` keeps
the highest full reward (a final row on ties), ``"weight"`` draws one with probability ∝ its
mass. With ``archive=False`` finished rows stay in the resampling, as absorbing particles.

Special cases, bit for bit: one checkpoint at the end (b ≥ T) with no resampling is softmax
sampling (sampling–importance–resampling from p with weights softmax(r/λ), the
:class:`~ctrlalign.controllers.softmax.SoftmaxSampling` of σ = 0), and with the argmax read-out
it is Best-of-n (no intermediate checkpoint: nothing is archived).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from .. import theory
from .._checks import ConfigError
from ..cost import Cost
from ..declare import Hyperparameter
from ..dynamics.base import Outcomes, Sample, StepwiseDynamics
from ..resampling import RESAMPLERS, resample
from ..rewards.base import Reward
from ..selection import BestSoFar, Kept, Reservoir, Selection
from .base import (
    Checkpoint,
    ClosedLoopController,
    ClosedLoopResult,
    distinct_rows,
    start_run,
)
from .checkpoints import CHECKPOINT_RULES, sentence_checkpoints_due
from .particles import Particles

__all__ = ["SMC", "Archived", "distinct_responses"]

READOUTS = ("argmax", "weight")


class Archived(NamedTuple):
    """A finished particle moved to SMC's archive (see the module docstring).

    Attributes:
        log_mass: log m = log S_k + ℓ − log n, its share of Ẑ.
        reward: its full reward r(x, y).
        position: the checkpoint t_k at which it was archived.
        sample: its response.
    """

    log_mass: float
    reward: float
    position: int
    sample: Sample


def distinct_responses(outcomes: Outcomes, archive: Sequence[Sequence[Archived]], final: torch.Tensor) -> torch.Tensor:
    """(D,) distinct responses among the final rows and the archive (``final``, the final rows'
    count by :func:`~ctrlalign.closedloop.base.distinct_rows`, where the archive is empty);
    responses are compared by their tokens (values for systems without tokens)."""
    def key(sample: Sample) -> tuple:
        return tuple(sample.tokens) if sample.tokens is not None else tuple(sample.value.flatten().tolist())

    out = final.clone()
    for j, entries in enumerate(archive):
        if entries:
            rows = {key(outcomes.sample(j, i)) for i in range(outcomes.num_samples)}
            out[j] = len(rows | {key(e.sample) for e in entries})
    return out


class SMC(ClosedLoopController):
    r"""Twisted SMC with n particles and a checkpoint every b tokens (see the module docstring).

    Args:
        num_particles: n >= 1, particles per prompt.
        block_size: b >= 1, tokens between checkpoints (b >= T: one checkpoint, at the end).
        temperature: λ > 0 of the target p·exp(r/λ) (the last twist is exactly r/λ).
        twist_temperature: fixed λ_t of the intermediate twists r(prefix)/λ_t (None: λ).
        twist_target_ess: instead, choose λ_t per prompt and checkpoint so that the ESS of the
            weights is this fraction of n (adaptive tempering); None: fixed.
        resample_threshold: κ in [0, 1]; resample when ESS < κ·n (0: never; 1: whenever the
            weights are not uniform).
        scheme: the resampling scheme, a name in :data:`~ctrlalign.resampling.RESAMPLERS`.
        readout: ``"argmax"`` (the best response by full reward) or ``"weight"`` (one drawn with
            probability ∝ its weight), over the final particles and the archive.
        archive: move finished particles (the end token before T) to an archive at each
            intermediate checkpoint and refill their rows from the alive ones (the module
            docstring); False: finished particles stay in the resampling.
        checkpoint_at: ``"tokens"`` (every b tokens) or ``"sentences"`` (each prompt's own
            checkpoints, when a quorum of its rows has ended a sentence, b tokens apart at most;
            :mod:`ctrlalign.closedloop.checkpoints`); needs a dynamics with
            :meth:`~ctrlalign.dynamics.base.StepwiseDynamics.sentence_ends`.
        sentence_quorum: q in (0, 1], the quorum of the ``"sentences"`` rule.
    """

    name = "smc"
    hyperparameters = (
        Hyperparameter("num_particles", int, "particles per prompt", "n", low=1),
        Hyperparameter("block_size", int, "tokens between checkpoints (>= T: one checkpoint, at the end)", "b",
                       low=1),
        Hyperparameter("temperature", float, "λ of the target p·exp(r/λ) (the last twist is exactly r/λ)", "λ",
                       low=0, low_open=True),
        Hyperparameter("twist_temperature", float, "fixed λ_t of the intermediate twists r(prefix)/λ_t (unset: λ)",
                       "λ_t", low=0, low_open=True, nullable=True, excludes=("twist_target_ess",)),
        Hyperparameter("twist_target_ess", float, "instead, λ_t per prompt and checkpoint so that the ESS is this "
                       "fraction of n (adaptive tempering)", "ρ_ESS", low=0, high=1, low_open=True, nullable=True,
                       excludes=("twist_temperature",)),
        Hyperparameter("resample_threshold", float, "resample when ESS < κ·n (0: never; 1: whenever the weights "
                       "are not uniform)", "κ", low=0, high=1),
        Hyperparameter("scheme", str, "the resampling scheme", choices=tuple(RESAMPLERS)),
        Hyperparameter("readout", str, "'argmax': the best response by full reward; 'weight': one drawn "
                       "with probability ∝ its weight (final particles and archive)", choices=READOUTS),
        Hyperparameter("archive", bool, "move finished particles to an archive at each checkpoint and refill their "
                       "rows from the alive ones (false: they stay in the resampling)"),
        Hyperparameter("checkpoint_at", str, "'tokens': a checkpoint every b tokens; 'sentences': a prompt's "
                       "checkpoint when a quorum of its rows has ended a sentence since its last one (b tokens at "
                       "the latest)", choices=CHECKPOINT_RULES),
        Hyperparameter("sentence_quorum", float, "with checkpoint_at 'sentences': the fraction of a prompt's "
                       "unfinished rows that must have ended a sentence (or finished)", "q", low=0, high=1,
                       low_open=True),
    )

    def __init__(self, *, num_particles: int = 16, block_size: int = 8, temperature: float = 0.1,
                 twist_temperature: float | None = None, twist_target_ess: float | None = None,
                 resample_threshold: float = 0.5, scheme: str = "systematic", readout: str = "argmax",
                 archive: bool = True, checkpoint_at: str = "tokens", sentence_quorum: float = 0.5) -> None:
        if twist_temperature is not None and twist_target_ess is not None:
            raise ConfigError("set at most one of twist_temperature (fixed λ_t) and twist_target_ess (adaptive λ_t)")
        for key, value in (("num_particles", num_particles), ("block_size", block_size),
                           ("temperature", temperature), ("twist_temperature", twist_temperature),
                           ("twist_target_ess", twist_target_ess), ("resample_threshold", resample_threshold),
                           ("scheme", scheme), ("readout", readout), ("archive", archive),
                           ("checkpoint_at", checkpoint_at), ("sentence_quorum", sentence_quorum)):
            self.set_hyperparameter(key, value)

    def twist_temperatures(self, scores: torch.Tensor, log_weights: torch.Tensor, previous: torch.Tensor,
                           alive: torch.Tensor | None = None) -> torch.Tensor:
        r"""(D,) λ_t for prefix scores (D, n): fixed, or adaptive so that the weights
        :math:`\log w + r/\lambda_t - \psi_\text{prev}` have ESS = ``twist_target_ess``·n — among
        the ``alive`` (D, n) rows only (ESS = ``twist_target_ess``·|A|) for a prompt with
        finished rows, whose twist is r/λ whatever λ_t."""
        if self.twist_target_ess is None:
            lam = self.temperature if self.twist_temperature is None else self.twist_temperature
            return torch.full(scores.shape[:1], lam, dtype=torch.float64)
        offsets = previous - log_weights
        lam_t = theory.adaptive_temperature(scores, self.twist_target_ess, offsets=offsets)
        if alive is not None:
            for j in torch.nonzero(alive.any(-1) & ~alive.all(-1)).flatten().tolist():
                a = alive[j]
                lam_t[j] = theory.adaptive_temperature(scores[j, a][None], self.twist_target_ess,
                                                       offsets=offsets[j, a][None])[0]
        return lam_t

    @staticmethod
    def reweight(log_weights: torch.Tensor, ratio: torch.Tensor, twist: torch.Tensor,
                 previous: torch.Tensor) -> torch.Tensor:
        r"""The checkpoint's update, all (D, n): :math:`\log w + [\log p - \log q]_\text{block} + \psi_t - \psi_\text{prev}`."""
        return log_weights + ratio + (twist - previous)

    @staticmethod
    def settle(pending: torch.Tensor, fired: torch.Tensor) -> torch.Tensor:
        r"""The log p − log q (D, n) still to be applied after a checkpoint at which the prompts
        ``fired`` (D,) took theirs: 0 for them, unchanged for the others (whose rows keep
        accumulating their blocks' ratios until their own checkpoint)."""
        return torch.where(fired.unsqueeze(-1), torch.zeros_like(pending), pending)

    @staticmethod
    def renormalize(log_normalizer: torch.Tensor, log_weights: torch.Tensor,
                    resampled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""After resampling the prompts flagged in ``resampled`` (D,): log Ẑ gains
        :math:`\log\overline{w}` and their weights reset to equal (0). Returns (log Ẑ (D,), ℓ (D, n))."""
        gained = torch.where(resampled, theory.log_mean_exp(log_weights, dim=-1), torch.zeros_like(log_normalizer))
        return log_normalizer + gained, torch.where(resampled.unsqueeze(-1), torch.zeros_like(log_weights), log_weights)

    @staticmethod
    def archive_rows(log_scale: torch.Tensor, log_weights: torch.Tensor, rewards: torch.Tensor, leaving: torch.Tensor,
                     outcomes: Outcomes, position: int) -> list[list[Archived]]:
        """The rows ``leaving`` (D, n) bool as D lists of :class:`Archived`: masses from the running
        scale log S (D,) and the weights ℓ (D, n), full rewards (D, n), responses from ``outcomes``."""
        n = log_weights.shape[-1]
        out: list[list[Archived]] = [[] for _ in range(log_weights.shape[0])]
        for j, i in torch.nonzero(leaving).tolist():
            out[j].append(Archived(float(log_scale[j] + log_weights[j, i]) - math.log(n), float(rewards[j, i]), position,
                                   outcomes.sample(j, i)))
        return out

    @staticmethod
    def combined_log_normalizer(final: torch.Tensor, archive: Sequence[Sequence[Archived]]) -> torch.Tensor:
        r"""(D,) log Ẑ = log(Σ_archive m + the final rows' mass), from the final rows' log mass
        ``final`` (D,) = log S_K + log mean w; a prompt with an empty archive keeps ``final`` as it is."""
        out = final.clone()
        for j, entries in enumerate(archive):
            if entries:
                masses = torch.tensor([e.log_mass for e in entries], dtype=torch.float64)
                out[j] = torch.logsumexp(torch.cat([masses, final[j:j + 1]]), 0)
        return out

    def run(self, dynamics: StepwiseDynamics, cost: Cost | Reward, prompts: Sequence[Any], *, seed: int = 0,
            context: Any = None, controls: torch.Tensor | None = None) -> ClosedLoopResult:
        """Run SMC on D prompts.

        Args:
            dynamics: a :class:`~ctrlalign.dynamics.base.StepwiseDynamics`.
            cost: the reward r (or a :class:`~ctrlalign.cost.Cost`); it must score prefixes.
            prompts: D prompts.
            seed: base seed (prompt j's generators as in :func:`~ctrlalign.align`: the same
                rollout uniforms as an open-loop run of the same seed).
            context: ``dynamics.prepare(prompts)`` already done, or None.
            controls: the proposal's pre-logit control V, (D, τ, d) shared by the particles or
                (D, n, τ, d), in the dynamics' coordinates; None: the base model.

        Returns:
            :class:`~ctrlalign.closedloop.base.ClosedLoopResult` with ``log_normalizer`` log Ẑ,
            ``final_rewards`` (D, n) the final rows' full rewards, each checkpoint's ``archived``
            count (None with ``archive=False`` or κ = 0), and in ``meta``: ``log_weights`` ℓ
            (D, n) and ``log_scale`` log S (D,) of the final rows, ``final_log_masses`` (D, n)
            their log m = log S + ℓ − log n, ``final_tokens`` / ``final_values``, ``archive``
            (D lists of :class:`Archived`) and ``archived`` (D counts).
        """
        t_start = time.perf_counter()
        sentences = self.checkpoint_at == "sentences"
        run = start_run("SMC", dynamics, cost, prompts, seed=seed, context=context,
                        scores_prefixes=lambda T: sentences or self.block_size < T or self.twist_target_ess is not None)
        prompts = run.prompts
        D, n, lam = len(prompts), self.num_particles, self.temperature
        select_gens = [g.select for g in run.generators]
        particles = Particles(run.dynamics, run.context, prompts, run.cost, n, run.generators, controls)
        T = particles.horizon
        log_w = torch.zeros(D, n, dtype=torch.float64)
        pending = torch.zeros(D, n, dtype=torch.float64)  # log p − log q since each prompt's last checkpoint
        psi = torch.zeros(D, n, dtype=torch.float64)
        log_z = torch.zeros(D, dtype=torch.float64)  # log S, the running scale
        identity = torch.arange(n).expand(D, n)
        archiving = self.archive and self.resample_threshold > 0
        archive: list[list[Archived]] = [[] for _ in range(D)]
        known = torch.full((D, n), math.nan, dtype=torch.float64)  # full rewards of finished rows kept in place
        trace: list[Checkpoint] = []
        if sentences:
            ends_before = run.dynamics.sentence_ends(particles.state)
            if ends_before is None:
                raise ConfigError(f"checkpoint_at='sentences' needs a dynamics with sentences; "
                                  f"{type(run.dynamics).__name__} has none (use checkpoint_at='tokens')")
            finished_before = particles.finished()
            last_t = torch.zeros(D, dtype=torch.long)
        stride = 1 if sentences else self.block_size  # sentences: look after every token
        t = 0
        while t < T:
            t0, t = t, min(t + stride, T)
            pending = pending + particles.log_ratio(particles.advance(t0, t))
            last = t == T  # not earlier when rows finish: a prompt's run must not depend on others
            fired = torch.ones(D, dtype=torch.bool)
            if sentences and not last:
                ends = run.dynamics.sentence_ends(particles.state)
                fired = sentence_checkpoints_due(t, last_t, self.block_size, ends, ends_before, particles.finished(),
                                                 finished_before, self.sentence_quorum)
                if not bool(fired.any()):
                    continue
            every = bool(fired.all())
            some_fired = torch.nonzero(fired).flatten()
            outcomes = particles.outcomes()
            finished = particles.finished() & fired.unsqueeze(-1) if archiving and not last \
                else torch.zeros(D, n, dtype=torch.bool)
            done = known.isfinite()  # scored already (rows of a prompt whose rows all finished): not again
            wanted = fired.unsqueeze(-1) & ~done
            scores = particles.score(outcomes, prefix=~finished if not last else False,
                                     rows=None if bool(wanted.all()) else wanted)
            scores = torch.where(done, known, scores)
            if last:
                lam_t = torch.full((D,), lam, dtype=torch.float64)
            else:
                lam_t = torch.full((D,), math.nan, dtype=torch.float64)
                lam_t[some_fired] = self.twist_temperatures(
                    scores[some_fired], (log_w + pending)[some_fired], psi[some_fired],
                    alive=~finished[some_fired] if archiving else None)
            new_psi = torch.where(torch.isinf(lam_t).unsqueeze(-1), torch.zeros_like(scores),
                                  scores / lam_t.unsqueeze(-1))
            new_psi = torch.where(finished, scores / lam, new_psi)  # a finished row's twist is final: r/λ
            new_psi = torch.where(fired.unsqueeze(-1), new_psi, psi)
            log_w = torch.where(fired.unsqueeze(-1), self.reweight(log_w, pending, new_psi, psi), log_w)
            pending = self.settle(pending, fired)
            psi = new_psi
            ess = theory.effective_sample_size(torch.log_softmax(log_w, dim=-1))
            distinct = distinct_rows(outcomes)
            resampled = torch.zeros(D, dtype=torch.bool)
            leaving = torch.zeros(D, n, dtype=torch.bool)
            rows = identity
            if not last and self.resample_threshold > 0:
                some, all_finished = finished.any(-1), finished.all(-1)
                refill = some & ~all_finished  # archive the finished rows, refill from the alive ones
                leaving = finished & refill.unsqueeze(-1)
                kept = torch.where(leaving, -math.inf, log_w)  # = log_w (bit for bit) where nothing leaves
                ancestors = identity.clone()
                ancestors[some_fired] = resample(kept[some_fired], [select_gens[j] for j in some_fired.tolist()],
                                                 self.scheme)
                resampled = torch.where(some, refill, ess < self.resample_threshold * n) & fired
                for j, entries in enumerate(self.archive_rows(log_z, log_w, scores, leaving, outcomes, t)):
                    archive[j].extend(entries)
                log_z, log_w = self.renormalize(log_z, kept, resampled)
                rows = torch.where(resampled.unsqueeze(-1), ancestors, identity)
                psi = psi.gather(1, rows)
                pending = pending.gather(1, rows)
                known = torch.where(finished, scores, known).gather(1, rows)
                particles.select(rows, carry_noise=False)
            if sentences and not last:
                ends_before = torch.where(fired.unsqueeze(-1), ends, ends_before).gather(1, rows)
                finished_before = torch.where(fired.unsqueeze(-1), particles.finished(), finished_before)
                last_t = torch.where(fired, t, last_t)
            nan = torch.full((D,), math.nan, dtype=torch.float64)
            trace.append(Checkpoint(t, torch.full((D,), n), torch.where(fired, ess, nan), lam_t,
                                    torch.where(fired, scores.mean(-1), nan), resampled, distinct,
                                    leaving.sum(-1) if archiving else None, None if every else fired))
        final = log_z + theory.log_mean_exp(log_w, dim=-1)
        chosen, reward, sample = self.read_out(scores, log_w, log_z, archive, select_gens)
        return ClosedLoopResult(
            prompts=prompts, responses=[outcomes.sample(j, int(chosen[j])) if sample[j] is None else sample[j]
                                        for j in range(D)],
            rewards=reward, trace=trace, tokens=particles.tokens, prefix_calls=particles.prefix_calls,
            full_calls=particles.full_calls, distinct=distinct_responses(outcomes, archive, distinct),
            seconds=time.perf_counter() - t_start, controller=self.name,
            log_normalizer=self.combined_log_normalizer(final, archive), final_rewards=scores,
            meta={"log_weights": log_w, "log_scale": log_z,
                  "final_log_masses": log_z.unsqueeze(-1) + log_w - math.log(n),
                  "final_tokens": None if outcomes.tokens is None else outcomes.tokens.tolist(),
                  "final_values": None if outcomes.values is None else outcomes.values.tolist(),
                  "archive": archive, "archived": [len(a) for a in archive]},
        )

    def read_out(self, scores: torch.Tensor, log_weights: torch.Tensor, log_scale: torch.Tensor,
                 archive: Sequence[Sequence[Archived]],
                 generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor, list[Sample | None]]:
        """The kept response per prompt over the final rows (full rewards ``scores`` (D, n),
        weights ℓ (D, n), running scale log S (D,)) and the archive: (the final row chosen (D,),
        the kept reward (D,) float64, D archived :class:`~ctrlalign.dynamics.base.Sample` s or None
        where a final row is kept). The final rows are read first, exactly as without an archive
        (``argmax``: the first best; ``weight``: one drawn ∝ w with the prompt's ``select``
        generator); then the archive as a second round of the same
        :class:`~ctrlalign.selection.Selection` (best: a strictly higher reward replaces; reservoir:
        drawn ∝ mass), with masses on the final rows' scale, log m − (log S − log n)."""
        D, n = scores.shape
        selection: Selection
        if self.readout == "argmax":
            selection = BestSoFar()
            chosen = scores.argmax(-1)
            kept = Kept(reward=scores.gather(1, chosen.view(D, 1)).squeeze(1), log_mass=selection.init(D).log_mass)
        else:
            selection = Reservoir()
            kept, chosen, _ = selection.update(selection.init(D), scores, log_weights, generators)
        reward = scores.gather(1, chosen.view(D, 1)).squeeze(1)
        sizes = torch.tensor([len(a) for a in archive], dtype=torch.long)
        if int(sizes.max()) == 0:
            return chosen, reward, [None] * D
        ell = torch.full((D, int(sizes.max())), -math.inf, dtype=torch.float64)
        rewards = torch.full_like(ell, -math.inf)
        for j, entries in enumerate(archive):
            for a, e in enumerate(entries):
                ell[j, a] = e.log_mass - (float(log_scale[j]) - math.log(n))
                rewards[j, a] = e.reward
        kept, pick, swap = selection.update(kept, rewards, ell, generators)
        pick = torch.minimum(pick, (sizes - 1).clamp_min(0))
        samples = [archive[j][int(pick[j])].sample if bool(swap[j]) else None for j in range(D)]
        return chosen, torch.where(swap, rewards.gather(1, pick.view(D, 1)).squeeze(1), reward), samples
