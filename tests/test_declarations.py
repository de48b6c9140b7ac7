"""One declaration per controller: constructor validation, config fields and CLI flags all come
from it, and a registered controller reaches the run config."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass, fields

import pytest

import ctrlalign as ca
from ctrlalign.controllers import CONTROLLERS, register_controller
from ctrlalign.declare import Hyperparameter, spec_of


@pytest.mark.parametrize("name", list(CONTROLLERS))
def test_every_init_argument_is_declared_with_its_default(name):
    spec = CONTROLLERS[name].spec()
    ctrl = CONTROLLERS[name]()
    for h in spec.hyperparameters:
        assert getattr(ctrl, h.name) == spec.defaults[h.name], h.name


def test_config_sections_and_cli_flags_are_the_union_of_declarations():
    from ctrlalign.cli import build_parser
    from ctrlalign.config import RunConfig

    for c in CONTROLLERS.values():  # every declared hyperparameter is accepted by the section
        spec = c.spec()
        cfg = RunConfig(prompts=["x"], controller={"name": spec.name, **spec.defaults})
        assert cfg.controller.hyperparameters() == {k: getattr(cfg.controller.instance, k) for k in spec.names}
    names = {h.name for c in CONTROLLERS.values() for h in c.spec().hyperparameters}
    align = next(a for a in build_parser()._subparsers._group_actions[0].choices.values() if a.prog.endswith("align"))
    flags = {o for a in align._actions for o in a.option_strings}
    assert {"--" + n.replace("_", "-") for n in names} <= flags


def test_an_undeclared_argument_is_refused():
    class Bad(ca.AISP):
        name = "bad"

        def __init__(self, *, num_samples: int = 8, mystery: float = 1.0):
            super().__init__(num_samples=num_samples)

    with pytest.raises(TypeError, match=r"\['mystery'\] have no Hyperparameter"):
        spec_of(Bad)


def test_hyperparameter_checks_name_the_value_and_range():
    h = Hyperparameter("rho", float, "a share", "ρ", low=0, high=1, low_open=True)
    assert h.check(0.5) == 0.5
    for bad in (0, 1.5, float("nan"), "x", True, None):
        with pytest.raises(ValueError, match=r"rho \(ρ\) must be a number in \(0, 1\]"):
            h.check(bad)


def test_registered_controller_reaches_the_run_config():
    code = textwrap.dedent('''
        import ctrlalign.config, ctrlalign.cli            # the schemas exist before the registration
        import ctrlalign as ca
        from ctrlalign.controllers import Hyperparameter, register_controller

        @register_controller
        class Nudge(ca.BestOfN):
            name = "nudge"
            hyperparameters = (Hyperparameter("kick", float, "a kick", low=0),)

            def __init__(self, *, num_samples=8, num_iterations=4, sigma=0.0, kick=0.5):
                super().__init__(num_samples=num_samples, num_iterations=num_iterations, sigma=sigma)
                self.set_hyperparameter("kick", kick)

        from ctrlalign.config import RunConfig
        cfg = RunConfig(prompts=["x"], controller={"name": "nudge", "kick": 2.0})
        print(cfg.controller.build().kick)
        args = ctrlalign.cli.build_parser().parse_args(["align", "x", "--controller", "nudge", "--kick", "4"])
        print(ctrlalign.cli.align_config(args).controller.build().kick)
        try:
            RunConfig(prompts=["x"], controller={"name": "nudge", "kick": -1})
        except ValueError as exc:
            print("refused:", "kick must be a number >= 0" in str(exc))
    ''')
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2.0", "4.0", "refused:", "True"]


# ---------------------------------------------------------------------- validated once, late


def test_bad_temperature_on_the_command_line_is_one_error(capsys):
    from ctrlalign.cli import main

    assert main(["align", "hello", "--preset", "learning", "--temperature", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "error: invalid options:"
    assert err[1:] == ["  controller.temperature: temperature (λ) must be a number > 0 (or unset), got -1.0"]


CHECKED: list[tuple[str, object]] = []


@dataclass(frozen=True)
class Counted(Hyperparameter):
    """A declaration that records every check of a value."""

    def check(self, value):
        CHECKED.append((self.name, value))
        return super().check(value)


class CountedAISP(ca.AISP):
    """AISP whose λ, α and n are declared by counting declarations."""

    name = "counted"
    hyperparameters = tuple(Counted(**{f.name: getattr(h, f.name) for f in fields(h)})
                            for h in (ca.AISP.spec()["temperature"], ca.AISP.spec()["alpha"],
                                      ca.AISP.spec()["num_samples"]))


@pytest.fixture
def counted():
    register_controller(CountedAISP)
    CHECKED.clear()
    yield CountedAISP
    del CONTROLLERS[CountedAISP.name]


def test_each_value_is_checked_once_from_flag_to_controller(counted):
    from ctrlalign.build import build_controller
    from ctrlalign.cli import align_config, build_parser

    args = build_parser().parse_args(["align", "x", "--controller", "counted", "--temperature", "0.2", "--alpha", "0.5",
                                 "-n", "4"])
    cfg = align_config(args)
    ctrl = build_controller(cfg.controller)
    assert ctrl is cfg.controller.instance  # built once, when the config was validated
    assert (ctrl.temperature, ctrl.alpha, ctrl.num_samples) == (0.2, 0.5, 4)
    assert sorted(CHECKED) == [("alpha", 0.5), ("num_samples", 4), ("temperature", 0.2)]


def test_a_second_validation_would_be_counted(counted):
    """Power: building the controller again (as the old validator's throwaway did) is caught."""
    from ctrlalign.config import validate_config

    cfg = validate_config({"prompts": ["x"], "controller": {"name": "counted", "temperature": 0.2}})
    assert CHECKED.count(("temperature", 0.2)) == 1
    cfg.controller.build(num_iterations=2)  # an explicit rebuild checks again
    assert CHECKED.count(("temperature", 0.2)) == 2


def test_old_controller_level_space_keys_say_where_they_moved():
    from ctrlalign.bench.config import BenchConfig
    from ctrlalign.config import validate_config

    with pytest.raises(ca.ConfigError, match=r"controller.rank: no longer set here: .*space: \{name: \.\.\., rank"):
        validate_config({"prompts": ["x"], "controller": {"name": "aisp", "rank": 8}})
    with pytest.raises(ValueError, match=r"controllers.0.horizon\n  no longer set here: it belongs to this entry's "
                                         r"control space: space: \{name: \.\.\., horizon"):
        BenchConfig(reward="sentiment", controllers=[{"name": "bon", "horizon": 8}])
    with pytest.raises(ValueError, match=r"controllers.0.num_iterations\n  not set here: the bench sets k"):
        BenchConfig(reward="sentiment", controllers=[{"name": "bon", "num_iterations": 2}])


def test_subspace_options_come_from_a_config():
    from ctrlalign.config import RunConfig

    cfg = RunConfig(prompts=["x"], space={"name": "subspace", "rank": 4, "shared": False, "directions": "head",
                                          "horizon": 8})
    s = cfg.space.build()
    assert (type(s), s.rank, s.shared, s.directions, s.horizon) == (ca.Subspace, 4, False, "head", 8)
