"""``dtype: auto``: bfloat16 exactly where the device computes it natively, the default preset's
choice, and bfloat16's next-token law against float32's on the real default model (slow)."""

from __future__ import annotations

import pytest
import test_reliability
import torch
from conftest import make_model, make_tokenizer

import ctrlalign as ca
from ctrlalign._checks import ConfigError
from ctrlalign.bench.agreement import continuation_tv, next_token_tv
from ctrlalign.build import build_dynamics
from ctrlalign.cli import align_config, build_parser, main
from ctrlalign.config import ModelConfig
from ctrlalign.models import load_packaged, native_bfloat16, resolve_dtype

pytestmark = pytest.mark.usefixtures("one_thread")

tiny = test_reliability.tiny

CPU = torch.device("cpu")


@pytest.mark.parametrize(("avx512_bf16", "amx", "want"), [(True, False, torch.bfloat16), (False, True, torch.bfloat16),
                                                          (False, False, torch.float32), (True, True, torch.bfloat16)])
def test_auto_is_bfloat16_exactly_on_cpus_with_bfloat16_units(monkeypatch, avx512_bf16, amx, want):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert native_bfloat16(CPU) is (want == torch.bfloat16)
    assert resolve_dtype("auto", CPU) == want


def test_auto_is_float32_where_torch_cannot_tell(monkeypatch):
    """A torch without the CPU probes (private API) falls back to float32, never to emulated bfloat16."""
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert resolve_dtype("auto", CPU) == torch.float32


@pytest.mark.parametrize("name", ["float32", "bfloat16", "float16"])
def test_named_dtypes_are_themselves(name):
    assert resolve_dtype(name, CPU) == getattr(torch, name) == resolve_dtype(getattr(torch, name))


def test_an_unknown_dtype_name_is_refused_naming_it_and_the_names():
    with pytest.raises(ConfigError, match=r"float8.*|.*'auto'.*float8"):
        resolve_dtype("float8", CPU)
    with pytest.raises(ConfigError) as exc:
        ca.CausalLM.from_pretrained("default", dtype="half-ish")
    assert "half-ish" in str(exc.value) and "bfloat16" in str(exc.value)


def test_the_default_preset_asks_for_auto_the_others_and_flags_decide_otherwise():
    parse = build_parser().parse_args
    assert align_config(parse(["align", "hi"])).model.dtype == "auto"
    assert align_config(parse(["align", "hi", "--dtype", "float32"])).model.dtype == "float32"
    assert align_config(parse(["align", "hi", "--preset", "learning"])).model.dtype == "float32"
    assert ModelConfig().dtype == "float32"  # configs and the Python API keep float32 unless asked


def test_auto_loads_the_resolved_dtype_and_says_so(tiny, capsys, tmp_path):
    dyn = build_dynamics(ModelConfig(name=str(tiny), dtype="auto"))
    assert dyn.dtype == resolve_dtype("auto", CPU)
    assert main(["align", "hello", "--model", str(tiny), "--max-new-tokens", "3", "-n", "4", "--schedule", "2:2",
                 "--output", str(tmp_path / "r.json")]) == 0
    assert f"({str(resolve_dtype('auto', CPU)).removeprefix('torch.')})" in capsys.readouterr().err


def test_a_bad_dtype_exits_2_naming_it_and_the_choices(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["align", "hello", "--dtype", "float8"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "float8" in err and "auto" in err and "bfloat16" in err


#: mean next-token total variation allowed between float32 and bfloat16 (measured 0.017–0.022)
TV_BOUND = 0.04


@pytest.mark.slow
def test_bfloat16_next_token_law_is_within_tv_bound_of_float32_on_the_default_model():
    """Equal in distribution, not bitwise: along float32-sampled continuations of three prompts the
    mean TV to float32's next-token law is below TV_BOUND. Power: float32 at temperature 1.1 — a
    change of law a user would notice — exceeds it."""
    m32, tok = load_packaged("smollm2-135m")
    m16, _ = load_packaged("smollm2-135m", dtype=torch.bfloat16)
    tv, yard = continuation_tv(m32, m16, tok, ["Write one sentence about your weekend.", "Describe a city at night.",
                                               "What makes a good friend?"], new_tokens=24)
    assert tv.mean() < TV_BOUND
    assert yard.mean() > TV_BOUND


def test_continuation_tv_is_zero_for_one_model_and_positive_for_two():
    """TV_t of a model with itself is 0 at every position, against another model it is in (0, 1],
    and the yardstick (temperature 1.1) is positive; one value per prompt and position."""
    a, b, tok = make_model("llama", seed=0), make_model("llama", seed=1), make_tokenizer(chat_template=True)
    same, yard = continuation_tv(a, a, tok, ["hi there", "tell me"], new_tokens=5)
    assert same.shape == (10,) and torch.equal(same, torch.zeros(10)) and (yard > 0).all()
    other, _ = continuation_tv(a, b, tok, ["hi there", "tell me"], new_tokens=5)
    assert ((other > 0) & (other <= 1)).all()
    assert torch.allclose(next_token_tv(torch.zeros(3, 4), torch.zeros(3, 4)), torch.zeros(3))
