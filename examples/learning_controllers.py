"""Tutorial 6: controllers that learn — a steering reward on SmolLM2, with the paper's AISP beside.

The reward is the MiniLM similarity of the response to a target description
(``EmbeddingSimilarity(target=...)``). Each configuration runs k = 16 iterations of n = 32
samples on the same prompts and seed, and we follow the **round-mean reward** — the mean reward
of a round's n samples, i.e. the proposal's own expected reward. A controller *learns* when that
curve rises; best-so-far can rise by luck alone.

* ``steer`` — AISP in a *subspace* of the pre-logit space spanned by the output head's rows of
  the target description's tokens (directions the user passes), λ adaptive (ESS = n/2),
  greedy decoding (the response is a function of the control);
* ``head-subspace`` — AISP in the top r = 32 right-singular directions of the head (no
  knowledge of the target), λ adaptive (ESS = n/4), greedy decoding: the configuration
  ``ctrlalign align`` uses by default (``--preset learning``);
* ``head-subspace-crn`` and ``head-subspace-sampled`` — the same controller with sampled
  decoding, with and without common random numbers across rounds (where the randomness lives);
* ``shared`` — one control shared by all tokens (d = 576 coordinates), λ adaptive, greedy;
* ``paper`` — AISP as published: one control per token (τ·d coordinates), fixed λ = 0.3,
  α = 0.999, sampled decoding.

Writes ``learning_controllers.json`` and ``learning_controllers.png`` into ``--out``; the
docs include the table from ``docs/snippets``. ``--quick`` runs k = 3, n = 8 on one prompt.

Run: ``OMP_NUM_THREADS=1 python examples/learning_controllers.py --out docs/img``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import ctrlalign as ca
from ctrlalign.bench.plots import figure_style, save_figure

TARGET = "a story about the ocean, waves and sailing ships"
PROMPTS = ["Write a short sentence about your morning.", "Describe your favourite place.",
           "Tell me about your weekend plans."]


def target_directions(lm: ca.CausalLM, text: str) -> torch.Tensor:
    """(r, d): the output head's rows of the distinct tokens of ``text`` (orthonormalised by
    the space): moving the pre-logit along them raises those tokens' logits."""
    ids = sorted(set(lm.tokenizer(" " + text.replace(",", ""), add_special_tokens=False)["input_ids"]))
    return lm.head_weight().detach().double()[ids]


def configurations(lm: ca.CausalLM, n: int, k: int) -> dict[str, tuple[ca.Controller, ca.ControlSpace, str]]:
    """name → (controller, control space, rollout mode: "greedy", "crn" (sampled, common random
    numbers) or "sampled")."""
    E = target_directions(lm, TARGET)
    head = ca.AISP(num_samples=n, num_iterations=k, sigma=1.0, target_ess=0.25)

    # --8<-- [start:configs]
    return {
        "steer": (ca.AISP(num_samples=n, num_iterations=k, sigma=0.3, target_ess=0.5),
                  ca.Subspace(rank=E.shape[0], directions=E, shared=True), "greedy"),
        "head-subspace": (head, ca.Subspace(rank=32), "greedy"),
        "head-subspace-crn": (head, ca.Subspace(rank=32), "crn"),
        "head-subspace-sampled": (head, ca.Subspace(rank=32), "sampled"),
        "shared": (ca.AISP(num_samples=n, num_iterations=k, sigma=0.3, target_ess=0.5), ca.Shared(), "greedy"),
        "paper": (ca.AISP(num_samples=n, num_iterations=k, sigma=0.3, temperature=0.3, alpha=0.999),
                  ca.PerToken(), "sampled"),
    }
    # --8<-- [end:configs]


def main(out: Path | None = None, quick: bool = False, num_samples: int = 32, num_iterations: int = 16,
         max_new_tokens: int = 24, only: list[str] | None = None) -> dict:
    torch.set_num_threads(1)
    if quick:
        num_samples, num_iterations, max_new_tokens = 8, 3, 12
    prompts = PROMPTS[:1] if quick else PROMPTS
    reward = ca.EmbeddingSimilarity(target=TARGET)
    results: dict[str, dict] = {}
    greedy_lm = ca.CausalLM.from_pretrained("default", base_logprobs=False,
                                            sampling=ca.SamplingConfig(max_new_tokens=max_new_tokens, greedy=True))
    sampled_lm = ca.CausalLM(greedy_lm.model, greedy_lm.tokenizer, base_logprobs=False,  # same weights
                             sampling=ca.SamplingConfig(max_new_tokens=max_new_tokens))
    for name, (ctrl, space, mode) in configurations(greedy_lm, num_samples, num_iterations).items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        res = ca.align(greedy_lm if mode == "greedy" else sampled_lm, reward, ctrl, prompts, space=space, seed=0,
                       common_random_numbers=mode == "crn")
        curve = [float(r.diagnostics.mean_reward.mean()) for r in res.trace]
        results[name] = {
            "controller": repr(ctrl), "space": space.describe(), "rollout": mode, "round_mean": curve,
            "best_so_far": [float(r.kept_reward.mean()) for r in res.trace],
            "ess": [float(r.diagnostics.ess.mean()) for r in res.trace],
            "kl": [float(r.diagnostics.kl.mean()) for r in res.trace],
            "rise": curve[-1] / curve[0], "best": float(res.rewards.mean()), "texts": res.texts,
            "seconds": time.perf_counter() - t0,
        }
        print(f"{name:<14} round-mean {curve[0]:.3f} -> {curve[-1]:.3f} (x{curve[-1] / curve[0]:.2f}), "
              f"best {results[name]['best']:.3f}, {results[name]['seconds']:.0f}s", flush=True)
    summary = {"target": TARGET, "prompts": prompts, "n": num_samples, "k": num_iterations, "T": max_new_tokens,
               "configurations": results}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "learning_controllers.json").write_text(json.dumps(summary, indent=1))
        with figure_style():
            fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
            for name, r in results.items():
                it = range(1, len(r["round_mean"]) + 1)
                axes[0].plot(it, r["round_mean"], "o-", ms=3, label=name)
                axes[1].plot(it, r["best_so_far"], "o-", ms=3, label=name)
            axes[0].set(title="round-mean reward (the proposal learns)", xlabel="iteration", ylabel="reward")
            axes[1].set(title="best so far", xlabel="iteration", ylabel="reward")
            axes[0].legend()
            save_figure(fig, out / "learning_controllers.png")
    return summary


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="folder for the JSON and the figure")
    ap.add_argument("--quick", action="store_true", help="k = 3, n = 8, one prompt")
    ap.add_argument("--only", nargs="*", default=None, help="run only these configurations")
    args = ap.parse_args()
    main(args.out, args.quick, only=args.only)
