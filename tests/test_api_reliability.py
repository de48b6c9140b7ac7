"""Reliability of the Python API: every entry point as careful as the command line.

Each row of a table is one bad input given to the Python API; the test asserts the exception
type and that the message names the offending value (and where it is: the reward, the prompt,
the file). Companion of tests/test_reliability.py, which drives the command line.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import test_reliability
import torch

import ctrlalign as ca
from ctrlalign import RewardError
from ctrlalign.dynamics.base import Outcomes


def outcomes_of(texts: list[list[str]]) -> Outcomes:
    return Outcomes(num_prompts=len(texts), num_samples=len(texts[0]), texts=texts)


ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["first prompt", "second prompt"]
OUT = outcomes_of([["a", "b"], ["c", "BAD"]])


def per_sample(value):
    """A per-sample reward returning ``value`` on the response "BAD" (prompt 1, sample 1)."""
    return ca.CallableReward(lambda p, t: value if t == "BAD" else 0.5, texts=True, name="mine")


def batched(value):
    """A batched reward returning ``value`` as the whole (D, n) grid."""
    return ca.CallableReward(lambda ps, o: value, batched=True, name="mine")


class ListReward(ca.Reward):
    """A subclass returning nested lists instead of a tensor."""

    name = "listy"

    def __init__(self, value):
        self.value = value

    def __call__(self, prompts, outcomes):
        return [[0.0, 0.0], [0.0, self.value]]


# --------------------------------------------------------------------------------------------
# 1. rewards whose output is not real numbers: (id, reward, fragments). All raise RewardError
# naming the reward, the prompt (index and text), the sample and the value's type.

BAD_REWARDS = [
    ("str", per_sample("0.5"), ["'mine'", "returned str", "'0.5'", "prompt 1 ('second prompt')", "sample 1"]),
    ("complex", per_sample(1 + 2j), ["'mine'", "returned complex", "prompt 1 ('second prompt')", "sample 1"]),
    ("complex-zero-imag", per_sample(0.5 + 0j), ["'mine'", "returned complex", "prompt 1"]),
    ("none", per_sample(None), ["'mine'", "returned NoneType", "prompt 1", "sample 1"]),
    ("list", per_sample([0.5]), ["'mine'", "returned list", "prompt 1"]),
    ("complex-tensor-scalar", per_sample(torch.tensor(1 + 1j)), ["'mine'", "complex64", "prompt 1"]),
    ("vector-tensor", per_sample(torch.ones(2)), ["'mine'", "shape (2,)", "prompt 1"]),
    ("numpy-str", per_sample(np.str_("0.5")), ["'mine'", "returned str_", "prompt 1"]),
    ("batched-strings", batched([["0.1", "0.2"], ["0.3", "0.4"]]), ["'mine'", "returned str", "'0.1'",
                                                                     "prompt 0 ('first prompt')", "sample 0"]),
    ("batched-complex-list", batched([[0.0, 0.0], [0.0, 1j]]), ["'mine'", "returned complex",
                                                                "prompt 1 ('second prompt')", "sample 1"]),
    ("batched-complex-tensor", batched(torch.tensor([[0, 0], [0, 1 + 2j]])), ["'mine'", "complex64",
                                                                              "prompt 1 ('second prompt')", "sample 1"]),
    ("batched-complex-real-valued", batched(torch.zeros(2, 2, dtype=torch.complex128)), ["'mine'", "complex128",
                                                                                        "prompt 0"]),
    ("batched-complex-array", batched(np.zeros((2, 2), dtype=complex)), ["'mine'", "complex128", "real numbers"]),
    ("batched-object-array", batched(np.array([["a", "b"], ["c", "d"]])), ["'mine'", "<U1", "real numbers"]),
    ("batched-ragged", batched([[0.0, 0.0], [0.0]]), ["'mine'", "lengths [2, 1]", "num_samples=2"]),
    ("batched-string", batched("0.5"), ["'mine'", "returned str"]),
    ("subclass-list-of-strings", ListReward("1"), ["'listy'", "returned str", "prompt 1 ('second prompt')",
                                                   "sample 1"]),
]


@pytest.mark.reliability("rewards")
@pytest.mark.parametrize("case, reward, fragments", BAD_REWARDS, ids=[c[0] for c in BAD_REWARDS])
def test_rewards_must_be_real_numbers(case, reward, fragments):
    with pytest.raises(RewardError) as exc:
        ca.evaluate_reward(reward, PROMPTS, OUT)
    for f in fragments:
        assert f in str(exc.value), (f, str(exc.value))


GOOD_REWARDS = [
    ("float", per_sample(0.25), 0.25),
    ("int", per_sample(3), 3.0),
    ("bool", per_sample(True), 1.0),
    ("numpy-float", per_sample(np.float32(0.25)), 0.25),
    ("numpy-int", per_sample(np.int64(2)), 2.0),
    ("numpy-0d", per_sample(np.array(0.25)), 0.25),
    ("tensor-0d", per_sample(torch.tensor(0.25, dtype=torch.float64)), 0.25),
    ("batched-list", batched([[0.5, 0.5], [0.5, 0.25]]), 0.25),
    ("batched-int-tensor", batched(torch.tensor([[1, 1], [1, 2]])), 2.0),
    ("batched-bool-tensor", batched(torch.tensor([[True, True], [True, False]])), 0.0),
    ("batched-numpy", batched(np.array([[0.5, 0.5], [0.5, 0.25]])), 0.25),
    ("subclass-list", ListReward(0.25), 0.25),
]


@pytest.mark.reliability("rewards")
@pytest.mark.parametrize("case, reward, expected", GOOD_REWARDS, ids=[c[0] for c in GOOD_REWARDS])
def test_real_rewards_are_accepted(case, reward, expected):
    r = ca.evaluate_reward(reward, PROMPTS, OUT)
    assert r.shape == (2, 2) and r.is_floating_point() and float(r[1, 1]) == expected


@pytest.mark.reliability("rewards")
def test_string_reward_stops_align():
    """Through :func:`ctrlalign.align` the refusal is the same (it used to score "0.5" as 0.5)."""
    dyn = ca.LinearGaussian(torch.eye(2), horizon=1, hidden_size=2)
    for value, kind in (("0.5", "str"), (1j, "complex")):
        with pytest.raises(RewardError, match=rf"'const' returned {kind} .* at prompt 0 .*sample 0"):
            ca.align(dyn, ca.CallableReward(lambda p, s, v=value: v, name="const"),
                     ca.AISP(num_samples=2, num_iterations=1), [torch.zeros(2)])


# --------------------------------------------------------------------------------------------
# 2. API entry points as careful as the command line: devices, prompts, model folders


#: the tiny random Llama saved as a model folder (the module-scoped fixture of test_reliability)
tiny = test_reliability.tiny


@pytest.fixture(scope="module")
def lm(tiny):
    return ca.CausalLM.from_pretrained(str(tiny), sampling=ca.SamplingConfig(max_new_tokens=3))


def corrupt(tiny, tmp_path, **values):
    """A copy of the tiny model folder whose config.json has ``values`` set."""
    import json
    import shutil

    folder = tmp_path / "corrupt"
    shutil.copytree(tiny, folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **values}))
    return folder


NO_CUDA = not torch.cuda.is_available()


@pytest.mark.reliability("api")
@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1)])
def test_from_pretrained_on_a_device_that_is_absent(tiny, device):
    with pytest.raises(ca.ConfigError) as exc:
        ca.CausalLM.from_pretrained(str(tiny), device=device)
    msg = str(exc.value)
    assert f"device {str(device)!r}" in msg and "available here: cpu" in msg, msg


@pytest.mark.reliability("api")
@pytest.mark.parametrize("device, fragment", [("tpu", "'tpu'"), ("gpu0", "'gpu0'")])
def test_from_pretrained_on_a_device_that_does_not_exist(tiny, device, fragment):
    with pytest.raises(ca.ConfigError, match="available here: cpu") as exc:
        ca.CausalLM.from_pretrained(str(tiny), device=device)
    assert fragment in str(exc.value)


BAD_PROMPTS = [
    ("empty", "", ["prompt 1", "empty"]),
    ("blank", " \n\t", ["prompt 1", "whitespace-only"]),
    ("lone-surrogate", "bad \ud800", ["prompt 1", "lone surrogate", "character 4"]),
    ("chat-lone-surrogate", [{"role": "user", "content": "a\udc00"}], ["prompt 1, message 0 ('user')", "surrogate"]),
    ("chat-empty-user", [{"role": "system", "content": ""}, {"role": "user", "content": ""}],
     ["prompt 1, message 1 ('user')", "empty"]),
]


@pytest.mark.reliability("api")
@pytest.mark.parametrize("case, prompt, fragments", BAD_PROMPTS, ids=[c[0] for c in BAD_PROMPTS])
def test_align_refuses_prompts_the_cli_refuses(lm, case, prompt, fragments):
    """``align`` (and the dynamics' own ``prepare``) refuse what ``ctrlalign align`` refuses,
    naming the prompt's index, before any prompt is run (it used to reach the tokenizer)."""
    reward = ca.CallableReward(lambda p, t: float(len(t)), texts=True)
    with pytest.raises(ca.ConfigError) as exc:
        ca.align(lm, reward, ca.AISP(num_samples=2, num_iterations=1), ["fine", prompt], batch_prompts=1)
    for f in fragments:
        assert f in str(exc.value), (f, str(exc.value))
    with pytest.raises(ca.ConfigError, match="prompt 1"):
        lm.prepare(["fine", prompt])


@pytest.mark.reliability("api")
def test_system_prompt_is_checked(tiny):
    with pytest.raises(ca.ConfigError, match="system_prompt .*surrogate"):
        ca.CausalLM.from_pretrained(str(tiny), system_prompt="x\udcff")


CORRUPT_CONFIGS = [
    ("wrong-type", {"hidden_size": "abc"}, ["hidden_size", "'abc'"]),
    ("not-an-integer", {"num_hidden_layers": 1.5}, ["num_hidden_layers", "1.5"]),
    ("heads-zero", {"num_attention_heads": 0}, ["ZeroDivisionError"]),
    ("not-divisible", {"hidden_size": 30}, ["hidden size (30)"]),
    ("rope-not-a-dict", {"rope_parameters": "x"}, ["rope_parameters"]),
    ("vocab-negative", {"vocab_size": -5}, ["-5"]),
    ("activation-unknown", {"hidden_act": "nope"}, ["'nope'"]),
]


@pytest.mark.reliability("api")
@pytest.mark.parametrize("case, values, fragments", CORRUPT_CONFIGS, ids=[c[0] for c in CORRUPT_CONFIGS])
def test_invalid_config_value_names_the_folder(tiny, tmp_path, case, values, fragments):
    """A local model folder whose config.json holds a value transformers refuses: a
    ConfigError naming the folder and config.json, not a huggingface_hub traceback."""
    folder = corrupt(tiny, tmp_path, **values)
    with pytest.raises(ca.ConfigError) as exc:
        ca.CausalLM.from_pretrained(str(folder))
    msg = str(exc.value)
    assert str(folder) in msg and "config.json" in msg, msg
    for f in fragments:
        assert f in msg, (f, msg)


@pytest.mark.reliability("api")
def test_cli_names_the_folder_of_an_invalid_config_value(tiny, tmp_path, capsys):
    """The command line says the same: exit 2, one line naming the folder and config.json."""
    from ctrlalign.cli import main

    folder = corrupt(tiny, tmp_path, hidden_size="abc")
    rc = main(["align", "hello", "--preset", "learning", "--model", str(folder), "-n", "2", "-k", "1",
               "--max-new-tokens", "2", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert str(folder) in err and "config.json" in err and "'abc'" in err, err


# --------------------------------------------------------------------------------------------
# 3. config values of the wrong type: (id, config fragment, the field and value named). Run and
# bench configs are strict about numbers and booleans: true is not an integer, 1 is not a
# boolean, "3" is not a number, 2.0 is not an integer; an integer is a number.

WRONG_TYPES = [
    ("bool-for-int-run", {"run": {"batch_prompts": True}}, ["run.batch_prompts", "True"]),
    ("bool-for-int-model", {"model": {"max_new_tokens": True}}, ["model.max_new_tokens", "True"]),
    ("bool-for-int-limit", {"limit": True}, ["limit", "True"]),
    ("string-for-int", {"run": {"seed": "3"}}, ["run.seed", "'3'"]),
    ("int-for-bool", {"model": {"greedy": 1}}, ["model.greedy", "1"]),
    ("string-for-bool", {"run": {"base": "yes"}}, ["run.base", "'yes'"]),
    ("bool-for-float", {"reward": [{"name": "sentiment", "weight": True}]}, ["reward.0.weight", "True"]),
    ("bool-for-hyperparameter-int", {"controller": {"num_samples": True}}, ["controller.num_samples", "got True"]),
    ("bool-for-hyperparameter-float", {"controller": {"sigma": True}}, ["controller.sigma", "got True"]),
    ("float-for-hyperparameter-int", {"controller": {"num_iterations": 2.0}}, ["controller.num_iterations", "got 2.0"]),
    ("string-for-hyperparameter", {"controller": {"temperature": "0.3"}}, ["controller.temperature", "'0.3'"]),
    ("bool-for-section-int", {"controller": {"final_samples": True}}, ["controller.final_samples", "True"]),
    ("int-for-section-bool", {"controller": {"common_random_numbers": 1}}, ["controller.common_random_numbers", "1"]),
    ("bool-for-space-option", {"space": {"name": "subspace", "rank": True}}, ["space.rank", "got True"]),
]


@pytest.mark.reliability("types")
@pytest.mark.parametrize("case, fragment, names", WRONG_TYPES, ids=[c[0] for c in WRONG_TYPES])
def test_run_config_types_are_strict(case, fragment, names):
    from ctrlalign.config import validate_config

    with pytest.raises(ca.ConfigError) as exc:
        validate_config({"prompts": ["a"], **fragment})
    for f in names:
        assert f in str(exc.value), (f, str(exc.value))


@pytest.mark.reliability("types")
def test_integers_are_numbers_in_configs():
    from ctrlalign.config import validate_config

    cfg = validate_config({"prompts": ["a"], "model": {"temperature": 1}, "controller": {"sigma": 1, "temperature": 2}})
    assert cfg.model.temperature == 1.0 and cfg.controller.build().sigma == 1.0


BENCH_WRONG_TYPES = [
    ("bool-budget", {"budgets": [8, True]}, ["budgets.1", "True"]),
    ("bool-seed", {"seeds": [True]}, ["seeds.0", "True"]),
    ("int-for-bool", {"coherence": 1}, ["coherence", "1"]),
    ("bool-for-int", {"batch_prompts": True}, ["batch_prompts", "True"]),
    ("entry-hyperparameter", {"controllers": [{"name": "aisp", "num_samples": True}]},
     ["controllers.0.num_samples", "got True"]),
    ("entry-greedy", {"controllers": [{"name": "aisp", "greedy": 1}]}, ["controllers.0.greedy", "1"]),
    ("sweep-n", {"sweep": {"num_samples": True}}, ["sweep.num_samples", "True"]),
]


@pytest.mark.reliability("types")
@pytest.mark.parametrize("case, fragment, names", BENCH_WRONG_TYPES, ids=[c[0] for c in BENCH_WRONG_TYPES])
def test_bench_config_types_are_strict(tmp_path, case, fragment, names):
    import json

    from ctrlalign.bench.config import load_bench_config

    p = tmp_path / "bench.json"
    p.write_text(json.dumps({"reward": [{"name": "sentiment"}], **fragment}))
    with pytest.raises(ca.ConfigError) as exc:
        load_bench_config(p)
    for f in names:
        assert f in str(exc.value), (f, str(exc.value))


@pytest.mark.reliability("types")
@pytest.mark.parametrize("kind, value", [("int", True), ("int", 4.0), ("int", "4"), ("float", True), ("float", "0.5"),
                                         ("float", 1 + 0j), ("bool", 1), ("bool", "true")])
def test_hyperparameter_check_is_strict(kind, value):
    from ctrlalign.declare import Hyperparameter, HyperparameterError

    h = Hyperparameter("x", {"int": int, "float": float, "bool": bool}[kind], "a test value")
    with pytest.raises(HyperparameterError, match=r"x must be .*got " + re.escape(repr(value))):
        h.check(value)


@pytest.mark.reliability("types")
def test_hyperparameter_check_accepts_numpy_and_int_for_float():
    from ctrlalign.declare import Hyperparameter

    assert Hyperparameter("x", int, "").check(np.int64(3)) == 3
    assert Hyperparameter("x", float, "").check(2) == 2.0 and isinstance(Hyperparameter("x", float, "").check(2), float)
    assert Hyperparameter("x", float, "").check(np.float32(0.5)) == 0.5
    assert ca.AISP(num_samples=np.int64(4)).num_samples == 4


# --------------------------------------------------------------------------------------------
# 4. `ctrlalign bench --report-only` on a results file that is not one: exit 2, one line naming
# the file (and, in a store, the line). (id, file content, fragments after the file name)

def _store_header() -> str:
    import json

    from ctrlalign.store import FORMAT, HEADER_KEY

    return json.dumps({HEADER_KEY: FORMAT, "kind": "bench", "hash": "x", "identity": {}, "config": {}}) + "\n"


def _run_line(**changes) -> str:
    import json

    line = {"id": "r1", "run": {"controller": "bon", "seed": 0, "prompt_ids": ["p0"]},
            "records": [{"controller": "bon", "budget": 4, "seed": 0, "prompt_id": "p0", "reward": 0.5}], "traces": []}
    return json.dumps({**line, **changes}) + "\n"


CORRUPT_RESULTS = [
    ("not-json", "not json at all\n", [" cannot be read as a bench result"]),
    ("empty", "", [" cannot be read as a bench result"]),
    ("not-utf8", b"\xff\xfe\x00", [" cannot be read as a bench result ('utf-8' codec"]),
    ("old-format-list", "[1, 2]", [" cannot be read as a bench result"]),
    ("old-format-records-not-a-list", '{"config": {}, "records": 3}', [": field 'records' is of type int"]),
    ("store-corrupt-line", _store_header() + '{"id": "a"\n', [":2: corrupt line"]),
    ("store-run-without-run", _store_header() + '{"id": "r1"}\n', [":2: field 'run' is missing"]),
    ("store-records-not-a-list", _store_header() + _run_line(records=5), [":2: field 'records' is of type int"]),
    ("store-record-without-keys", _store_header() + _run_line(records=[{"controller": "bon"}]),
     [":2: records[0] has no 'budget', 'seed', 'prompt_id', 'reward'"]),
    ("store-finished-without-order", _store_header() + _run_line() + '{"id": "finished", "config": {}, "meta": {}}\n',
     [":3: field 'order' is missing"]),
]


@pytest.mark.reliability("results-files")
@pytest.mark.parametrize("case, content, fragments", CORRUPT_RESULTS, ids=[c[0] for c in CORRUPT_RESULTS])
def test_report_only_on_a_corrupt_results_file_names_it(tmp_path, capsys, case, content, fragments):
    import json

    from ctrlalign.cli import main

    out = tmp_path / "res.jsonl"
    if isinstance(content, bytes):
        out.write_bytes(content)
    else:
        out.write_text(content)
    cfg = tmp_path / "bench.json"
    cfg.write_text(json.dumps({"reward": [{"name": "sentiment"}], "controllers": [{"name": "bon", "num_samples": 4}],
                               "budgets": [4], "output": str(out), "figures": None, "coherence": False}))
    rc = main(["bench", str(cfg), "--report-only"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    for f in fragments:
        assert str(out) + f in err, (f, err)


# --------------------------------------------------------------------------------------------
# 5. the float16 overflow bound follows the control space used


@pytest.mark.reliability("checks")
def test_sigma_bound_follows_the_control_space():
    """A token's control spans d directions per token but only r in a rank-r subspace: the
    largest σ allowed grows by √(d/r) (the learning preset, σ = 1 in a 32-dim head subspace,
    was refused in float16 by the per-token bound)."""
    from types import SimpleNamespace

    from ctrlalign.build import check_sigma_fits
    from ctrlalign.spaces import Blocks, PerToken, Shared, Subspace

    torch.manual_seed(0)
    d = 576
    W = torch.randn(1000, d) * 0.05  # max row norm ≈ 1.3
    lm16 = SimpleNamespace(head_weight=lambda: W, dtype=torch.float16)
    row = float(W.norm(dim=-1).max())
    per_token = math.sqrt(65504.0) / (10 * math.sqrt(d) * row)
    subspace32 = math.sqrt(65504.0) / (10 * math.sqrt(32) * row)
    assert per_token < 1.0 < subspace32  # the case: σ = 1 fits the subspace, not per-token
    aisp = ca.AISP(sigma=1.0)
    check_sigma_fits(aisp, lm16, Subspace(rank=32))
    for space in (None, PerToken(), Shared(), Blocks(block_size=4)):
        with pytest.raises(ca.ConfigError, match=rf"sigma \(σ\) = 1 would overflow the model's float16 .*span {d} of "
                                                 rf"d = {d} .*σ <= {per_token:.3g}"):
            check_sigma_fits(aisp, lm16, space)
    with pytest.raises(ca.ConfigError, match=rf"subspace\(32\) controls span 32 of d = {d}.*σ <= {subspace32:.3g}"):
        check_sigma_fits(ca.AISP(sigma=2 * subspace32), lm16, Subspace(rank=32))
    # power: the bound is exactly at the limit in each space
    check_sigma_fits(ca.AISP(sigma=0.999 * subspace32), lm16, Subspace(rank=32))
    check_sigma_fits(ca.AISP(sigma=0.999 * per_token), lm16, PerToken())


@pytest.mark.reliability("checks")
def test_sigma_bound_reaches_receding_horizons_inner_controller():
    """receding-horizon samples its windows' controls with its inner controller's σ: the same
    float16 bound applies (power: without the delegation a σ far past it passed unchecked)."""
    from types import SimpleNamespace

    from ctrlalign.build import check_sigma_fits

    W = torch.ones(10, 64)
    lm16 = SimpleNamespace(head_weight=lambda: W, dtype=torch.float16)
    limit = math.sqrt(65504.0) / (10 * math.sqrt(64) * float(W.norm(dim=-1).max()))
    mpc = ca.RecedingHorizon(inner=ca.AISP(num_samples=2, num_iterations=1, sigma=3 * limit), block_size=2)
    assert mpc.sigma == 3 * limit
    with pytest.raises(ca.ConfigError, match=r"sigma \(σ\) = .* would overflow the model's float16"):
        check_sigma_fits(mpc, lm16)
    check_sigma_fits(ca.RecedingHorizon(inner=ca.AISP(sigma=0.999 * limit)), lm16)
    check_sigma_fits(ca.RecedingHorizon(), lm16)  # Best-of-N windows: σ = 0, nothing to check


@pytest.mark.reliability("checks")
def test_cli_checks_sigma_in_the_space_it_runs(tiny, capsys):
    """``ctrlalign align --dtype float16``: a σ refused per-token passes in a rank-2 subspace."""
    from ctrlalign.cli import main

    lm = ca.CausalLM.from_pretrained(str(tiny))
    d, row = lm.hidden_size, max(1.0, float(lm.head_weight().detach().norm(dim=-1).max()))
    sigma = 2 * math.sqrt(65504.0) / (10 * math.sqrt(d) * row)  # 2× the per-token bound, < the rank-2 one
    assert sigma < math.sqrt(65504.0) / (10 * math.sqrt(2) * row)
    argv = ["align", "hello", "--preset", "learning", "--model", str(tiny), "-n", "2", "-k", "1", "--max-new-tokens", "2", "-q",
            "--dtype", "float16", "--sigma", f"{sigma:.6g}", "--space"]
    assert main([*argv, "per-token"]) == 2
    assert "would overflow the model's float16" in capsys.readouterr().err
    assert main([*argv, "subspace", "--rank", "2"]) != 2
    assert "overflow" not in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# 6. the errors page: every error importable from ctrlalign, every example on the page true

ERRORS_PAGE = ROOT / "docs" / "api" / "errors.md"


def error_examples() -> list[tuple[str, str, str]]:
    """(error name, code, message start) of each ```python block of docs/api/errors.md; the
    block's last line is ``# ErrorName: start of the message``."""
    out = []
    for block in re.findall(r"```python\n(.*?)```", ERRORS_PAGE.read_text(), re.DOTALL):
        *code, last = block.rstrip("\n").split("\n")
        name, _, message = last.removeprefix("# ").partition(": ")
        out.append((name, "\n".join(code), message))
    return out


@pytest.mark.reliability("errors-page")
def test_every_error_is_importable_from_ctrlalign_and_on_the_errors_page():
    import inspect

    errors = {name for name, obj in vars(ca).items()
              if inspect.isclass(obj) and issubclass(obj, BaseException) and name in ca.__all__}
    assert {"ConfigError", "HyperparameterError", "RewardError", "UnsupportedModelError", "RunError",
            "ConfigChangedError", "PromptChangedError", "CorruptResultsError", "OutputLockedError", "OutputError",
            "RunInterrupted"} <= errors
    page = ERRORS_PAGE.read_text()
    for name in errors:
        assert f"## {name}" in page or f"### {name}" in page or name == "RunError", f"{name} has no section"
        assert f"::: {getattr(ca, name).__module__}.{name}" in page, f"{name} is not rendered on the errors page"
    assert {name for name, *_ in error_examples()} >= errors - {"RunError", "PromptChangedError", "RunInterrupted"}


@pytest.mark.reliability("errors-page")
@pytest.mark.parametrize("name, code, message", error_examples(), ids=[e[0] for e in error_examples()])
def test_errors_page_examples_raise_what_they_say(tmp_path, monkeypatch, name, code, message):
    import runpy

    monkeypatch.chdir(tmp_path)
    (tmp_path / "example.py").write_text(code)
    with pytest.raises(getattr(ca, name)) as exc:
        runpy.run_path(str(tmp_path / "example.py"))
    assert type(exc.value) is getattr(ca, name)
    assert str(exc.value).startswith(message), (message, str(exc.value))
