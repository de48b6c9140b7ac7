"""Batched AISP (align_stream): the decode batch stays full, and every prompt gets exactly the
result align() gives it — bit for bit on the toy systems — whatever else shares its batch."""

from __future__ import annotations

import pytest
import torch

import ctrlalign as ca
from ctrlalign.align import align_stream
from ctrlalign.schedule import stack_rows, take_row
from ctrlalign.selection import FinalProposal
from ctrlalign.testing import CONTROLLERS, SYSTEMS, same_sample


def _seven(system: str):
    dyn, reward, prompts = SYSTEMS[system]()
    g = torch.Generator().manual_seed(5)
    extra = [p + 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype) for p in prompts[:3]]
    return dyn, reward, prompts + extra


@pytest.mark.parametrize("system", list(SYSTEMS))
@pytest.mark.parametrize("space", ["per-token", "shared"])
@pytest.mark.parametrize("name", ["aisp", "aisp_adaptive", "softmax", "cem_refit", "bon_plain"])
def test_stream_equals_align_per_prompt(system, space, name):
    dyn, reward, prompts = _seven(system)
    ctrl = CONTROLLERS[name](5, 3)
    ref = ca.align(dyn, reward, ctrl, prompts, space=ca.spaces.make_space(space), seed=7)
    out = align_stream(dyn, reward, ctrl, prompts, batch_prompts=3, space=ca.spaces.make_space(space), seed=7)
    assert torch.equal(out.rewards, ref.rewards)
    assert torch.equal(out.state.mean, ref.state.mean)
    assert all(same_sample(a, b) for a, b in zip(out.responses, ref.responses))
    assert torch.equal(out.reward_calls, ref.reward_calls)
    for a, b in zip(out.trace, ref.trace):
        assert torch.equal(a.diagnostics.mean_reward, b.diagnostics.mean_reward)
        assert torch.equal(a.kept_reward, b.kept_reward)
    # 7 prompts, 3 in flight, k = 3: the batch is full (3 prompts × n rows) except in the last cohort
    assert out.meta["rows"] == [15] * 6 + [5] * 3
    assert out.meta["prepares"] == 3


def test_stream_with_final_proposal_and_common_random_numbers():
    dyn, reward, prompts = _seven("softmax_head")
    ctrl = ca.AISP(num_samples=4, num_iterations=2, sigma=0.7, target_ess=0.5)
    kw = {"seed": 3, "selection": FinalProposal(3), "common_random_numbers": True, "space": ca.Shared()}
    ref = ca.align(dyn, reward, ctrl, prompts, **kw)
    out = align_stream(dyn, reward, ctrl, prompts, batch_prompts=2, **kw)
    assert torch.equal(out.rewards, ref.rewards)
    assert all(same_sample(a, b) for a, b in zip(out.responses, ref.responses))
    assert out.reward_calls.tolist() == [4 * 2 + 3] * len(prompts)


def test_rows_round_trip():
    st = ca.AISP().init(3, ca.PerToken(horizon=2, hidden_size=2))
    st = st.replace(mean=torch.randn(3, 2, 2))
    back = stack_rows([take_row(st, i) for i in range(3)])
    assert torch.equal(back.mean, st.mean) and torch.equal(back.std, st.std)


def test_bad_batch_prompts_is_named():
    dyn, reward, prompts = _seven("linear")
    with pytest.raises(ValueError, match=r"batch_prompts \(S\) must be an integer >= 1, got 0"):
        align_stream(dyn, reward, ca.AISP(), prompts, batch_prompts=0)
