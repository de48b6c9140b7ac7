"""Tutorial 3: align SmolLM2-135M-Instruct with a lexicon reward, then with an LM judge.

Loads the packaged default model (offline, CPU), then for the same prompts runs

1. AISP with the VADER lexicon sentiment reward, against Best-of-N from the plain model at
   the same budget n·k;
2. AISP with an LM judge (the same SmolLM2 asked "helpful and harmless? Yes/No"; the reward is
   the log-odds of Yes vs No), reusing the already loaded model as the judge.

Kept cheap: n = 4, k = 3, 24 new tokens by default (``--quick``: n = 4, k = 2, 12 tokens,
one prompt). Writes align_smollm2.png (best reward per iteration) into ``--out``.

Run: ``OMP_NUM_THREADS=1 python examples/align_smollm2.py [--out docs/img] [--quick]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import ctrlalign as ca

PROMPTS = ["Describe a rainy Monday.", "Write one sentence about your weekend."]


def main(out: Path | None = None, quick: bool = False, num_samples: int = 4, num_iterations: int = 3,
         max_new_tokens: int = 24) -> dict:
    if quick:
        num_iterations, max_new_tokens = 2, 12
    prompts = PROMPTS[:1] if quick else PROMPTS
    lm = ca.CausalLM.from_pretrained("default", sampling=ca.SamplingConfig(max_new_tokens=max_new_tokens))
    n, k = num_samples, num_iterations
    results = {}

    # 1. lexicon reward: AISP vs Best-of-(n·k) from the plain model, same prompts, same seed
    sentiment = ca.LexiconSentiment()
    aisp = ca.AISP(num_samples=n, num_iterations=k, sigma=0.1, temperature=0.1, alpha=0.99)
    bon = ca.BestOfN(num_samples=n, num_iterations=k, sigma=0.0)
    for label, ctrl in (("sentiment/AISP", aisp), ("sentiment/BoN plain", bon)):
        results[label] = ca.align(lm, sentiment, ctrl, prompts, seed=0)

    # 2. LM judge: reuse the loaded model and tokenizer as the judge (no second load)
    judge = ca.LMJudge(lm.model, lm.tokenizer)
    results["judge/AISP"] = ca.align(lm, judge, aisp, prompts, seed=0)

    for label, res in results.items():
        print(f"\n== {label}  ({res.controller}, {int(res.reward_calls[0])} reward calls per prompt)")
        for d, prompt in enumerate(prompts):
            tr = res.prompt_trace(d)
            print(f"  {prompt!r}  reward {float(res.rewards[d]):.3f}  "
                  f"ESS per iteration {[round(t['ess'], 2) for t in tr]}  final ‖U‖ {tr[-1]['mean_norm']:.1f}")
            print("    " + (res.texts[d] or "").replace("\n", " ")[:200])

    if out is not None:
        import matplotlib.pyplot as plt

        from ctrlalign.bench.plots import figure_style, save_figure

        with figure_style():
            fig, ax = plt.subplots(1, 2, figsize=(12, 4.6))
            for label, res in results.items():
                a = ax[0] if label.startswith("sentiment") else ax[1]
                for d in range(len(prompts)):
                    a.plot(range(1, k + 1), [t["best_reward"] for t in res.prompt_trace(d)], "o-", ms=4,
                           label=f"{label.split('/')[1]} · prompt {d}")
            ax[0].set_title("VADER sentiment"), ax[1].set_title("LM judge log-odds (Yes vs No)")
            for a in ax:
                a.set_xlabel("iteration"), a.set_ylabel("best reward so far"), a.legend()
            save_figure(fig, out / "align_smollm2.png")
        print("wrote", out / "align_smollm2.png")
    return {label: res.rewards.tolist() for label, res in results.items()}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="folder for the plot")
    ap.add_argument("--quick", action="store_true", help="one prompt, k = 2, 12 tokens")
    ap.add_argument("--num-samples", type=int, default=4)
    ap.add_argument("--num-iterations", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    args = ap.parse_args()
    main(args.out, args.quick, args.num_samples, args.num_iterations, args.max_new_tokens)
