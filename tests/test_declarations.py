"""One declaration per controller: constructor validation, config fields and CLI flags all come
from it, and a registered controller reaches the run config."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import ctrlalign as ca
from ctrlalign.controllers import CONTROLLERS
from ctrlalign.declare import Hyperparameter, spec_of


@pytest.mark.parametrize("name", list(CONTROLLERS))
def test_every_init_argument_is_declared_with_its_default(name):
    spec = CONTROLLERS[name].spec()
    ctrl = CONTROLLERS[name]()
    for h in spec.hyperparameters:
        assert getattr(ctrl, h.name) == spec.defaults[h.name], h.name


def test_config_sections_and_cli_flags_are_the_union_of_declarations():
    from ctrlalign.cli import _parser
    from ctrlalign.config import RunConfig

    for c in CONTROLLERS.values():  # every declared hyperparameter is accepted by the section
        spec = c.spec()
        cfg = RunConfig(prompts=["x"], controller={"name": spec.name, **spec.defaults})
        assert cfg.controller.hyperparameters() == {k: getattr(cfg.controller.instance, k) for k in spec.names}
    names = {h.name for c in CONTROLLERS.values() for h in c.spec().hyperparameters}
    align = next(a for a in _parser()._subparsers._group_actions[0].choices.values() if a.prog.endswith("align"))
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
        import ctrlalign as ca
        from ctrlalign.controllers import Hyperparameter, register_controller

        @register_controller
        class Nudge(ca.BestOfN):
            name = "nudge"
            hyperparameters = (Hyperparameter("kick", float, "a kick", low=0),)

            def __init__(self, *, num_samples=8, num_iterations=4, sigma=0.0, kick=0.5):
                super().__init__(num_samples=num_samples, num_iterations=num_iterations, sigma=sigma)
                self._set("kick", kick)

        from ctrlalign.config import RunConfig
        cfg = RunConfig(prompts=["x"], controller={"name": "nudge", "kick": 2.0})
        print(cfg.controller.build().kick)
        try:
            RunConfig(prompts=["x"], controller={"name": "nudge", "kick": -1})
        except ValueError as exc:
            print("refused:", "kick must be a number >= 0" in str(exc))
    ''')
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2.0", "refused:", "True"]
