"""The component registry: registration, collision and type errors, lazy built-ins, static discovery."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import BaseModel, ValidationError

from speedrun.components import Component, Params
from speedrun.components.registry import BUILTIN, Registry, declared_component_names
from speedrun.errors import SpeedrunError


class AlphaParams(Params):
    weight: float = 1.0


class Alpha(Component):
    name = "alpha"
    Params = AlphaParams


class Beta(Component):
    name = "beta"


class AlphaAgain(Component):
    name = "alpha"


def test_register_and_get() -> None:
    reg = Registry(lazy={})
    assert reg.register(Alpha) is Alpha
    reg.register(Beta)
    assert reg.names() == ["alpha", "beta"]
    assert "alpha" in reg and "gamma" not in reg
    assert reg.get("alpha") is Alpha and reg.get("beta") is Beta
    assert Beta.Params is Params  # the default Params takes no fields and forbids unknown ones


def test_registries_are_independent() -> None:
    a, b = Registry(lazy={}), Registry(lazy={})
    a.register(Alpha)
    assert "alpha" in a and "alpha" not in b
    assert "alpha" not in BUILTIN
    assert Registry().names() == sorted(BUILTIN)


def test_same_name_twice_is_a_collision() -> None:
    reg = Registry(lazy={})
    reg.register(Alpha)
    with pytest.raises(SpeedrunError) as info:
        reg.register(AlphaAgain)
    msg = str(info.value)
    assert "AlphaAgain" in msg and "component name 'alpha' is already registered" in msg
    assert reg.get("alpha") is Alpha  # the first registration stands
    with pytest.raises(SpeedrunError, match="already registered"):
        reg.register(Alpha)  # the very same class twice, too


def test_custom_colliding_with_lazy_builtin() -> None:
    reg = Registry(lazy={"alpha": "speedrun.no_such_module:Alpha"})
    with pytest.raises(SpeedrunError) as info:
        reg.register(Alpha, origin="submissions/x/components.py:Alpha")
    msg = str(info.value)
    assert msg.startswith("submissions/x/components.py:Alpha: component name 'alpha' is already registered")
    assert "built-in" in msg


def test_lazy_builtins_import_only_when_asked() -> None:
    reg = Registry(lazy={"ghost": "speedrun.no_such_module:Ghost", "base": "speedrun.protocol:Component"})
    assert reg.names() == ["base", "ghost"] and "ghost" in reg  # no import needed for either
    assert "speedrun.no_such_module" not in sys.modules
    assert reg.get("base") is Component
    with pytest.raises(ModuleNotFoundError):  # a broken built-in entry is a harness bug, not a user error
        reg.get("ghost")


def test_register_rejects_missing_name() -> None:
    class Nameless(Component):
        pass

    class EmptyName(Component):
        name = ""

    for cls in (Nameless, EmptyName):
        with pytest.raises(SpeedrunError) as info:
            Registry(lazy={}).register(cls)
        assert cls.__name__ in str(info.value) and "sets no 'name'" in str(info.value)


@pytest.mark.parametrize("bad", [BaseModel, dict, 3, "Params"], ids=["pydantic-model", "dict", "int", "string"])
def test_register_rejects_params_not_a_params_subclass(bad: object) -> None:
    class NotPydantic(BaseModel):
        weight: float = 1.0

    cls = type("Odd", (Component,), {"name": "odd", "Params": NotPydantic if bad is BaseModel else bad})
    with pytest.raises(SpeedrunError) as info:
        Registry(lazy={}).register(cls, origin="x.py:Odd")
    assert str(info.value) == "x.py:Odd: Params must subclass speedrun.components.Params"


def test_unknown_name_lists_known_names() -> None:
    reg = Registry(lazy={"zeta": "speedrun.no_such_module:Zeta"})
    reg.register(Beta)
    reg.register(Alpha)
    with pytest.raises(SpeedrunError) as info:
        reg.get("gamma")
    assert str(info.value) == "unknown component 'gamma'; known: ['alpha', 'beta', 'zeta']"
    with pytest.raises(SpeedrunError, match="unknown component 'gamma'; known: none"):
        Registry(lazy={}).get("gamma")


# --------------------------------------------------------------------------------------------------
# A submission's components.py: imported only by ``speedrun run``; read with ast otherwise

CUSTOM = '''
from typing import ClassVar

from speedrun.components import Component, Params
from speedrun.protocol import Component as Imported  # imported, not defined here


class GammaParams(Params):
    scale: float = 2.0


class Gamma(Component):
    name = "gamma"
    Params = GammaParams


class Delta(Component):
    name: ClassVar[str] = "delta"


class Helper:
    """Not a component, though it assigns a string to name: ignored statically and on import."""
    name = "helper"


class HelperParams(Params):
    name: str = "helper"  # a field, in a Params class: not a component either


NAME = "epsilon"


class Computed(Component):
    name = NAME  # not a literal: invisible to the static reader


name = "module-level"
'''


def _write(tmp_path: Path, text: str, folder: str = "sub") -> Path:
    path = tmp_path / folder / "components.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_declared_component_names_reads_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "ran.marker"
    path = _write(tmp_path, f"open({str(marker)!r}, 'w').write('x')\nraise SystemExit(3)\n" + CUSTOM)
    assert declared_component_names(path) == ["gamma", "delta"]
    assert not marker.exists()


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_declared_component_names_refuses_too_deep_a_file(tmp_path: Path, depth: int) -> None:
    # The parser recurses per level: RecursionError at one depth, MemoryError at another.
    path = _write(tmp_path, "x = " + "-" * depth + "1\n")
    with pytest.raises(SpeedrunError, match=re.escape(f"{path}: nested too deeply for Python to parse")):
        declared_component_names(path)


def test_declared_component_names_follows_bases_as_import_does(tmp_path: Path) -> None:
    text = CUSTOM + """

class FromAlias(Imported):
    name = "zeta"


class Grandchild(Gamma):
    name = "eta"


class FromBuiltin(REPA):
    name = "theta"


def factory():
    class Local(Component):  # not a module attribute: never registered
        name = "iota"
    return Local
"""
    path = _write(tmp_path, text.replace("from typing", "from speedrun.components.repa import REPA\nfrom typing"))
    static = declared_component_names(path)
    assert static == ["gamma", "delta", "zeta", "eta", "theta"]
    reg = Registry(lazy={})
    assert sorted(reg.load_submission_components(path)) == sorted([*static, "epsilon"])  # epsilon: not a literal


def test_declared_component_names_errors_name_the_file(tmp_path: Path) -> None:
    bad = _write(tmp_path, "class A(Component):\n    name = 'a'\n  oops\n", "syntax")
    with pytest.raises(SpeedrunError) as info:
        declared_component_names(bad)
    assert str(info.value).startswith(f"{bad}: not valid Python (line 3")
    binary = tmp_path / "bin" / "components.py"
    binary.parent.mkdir()
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SpeedrunError, match=r"components.py: cannot read"):
        declared_component_names(binary)
    nul = _write(tmp_path, "x = 1\0\n", "nul")
    with pytest.raises(SpeedrunError) as info:
        declared_component_names(nul)
    assert str(info.value) == f"{nul}: not valid Python (source code string cannot contain null bytes)"


def test_declared_component_names_refuses_one_name_twice(tmp_path: Path) -> None:
    twice = _write(tmp_path, CUSTOM.replace('name: ClassVar[str] = "delta"', 'name = "gamma"'), "twice")
    with pytest.raises(SpeedrunError) as info:
        declared_component_names(twice)
    # the message registering at run time gives (test_load_submission_components_collisions_and_failures)
    assert str(info.value).startswith(f"{twice}:Delta: component name 'gamma' is already registered")


def test_load_submission_components_registers_defined_classes(tmp_path: Path) -> None:
    path = _write(tmp_path, CUSTOM, "my-sub")
    reg = Registry(lazy={})
    added = reg.load_submission_components(path)
    assert sorted(added) == ["delta", "epsilon", "gamma"]  # Imported and Helper are not registered
    gamma = reg.get("gamma")
    assert gamma.__name__ == "Gamma" and gamma.Params(scale=3.0).scale == 3.0
    assert reg.names() == ["delta", "epsilon", "gamma"]


def test_load_submission_components_collisions_and_failures(tmp_path: Path) -> None:
    path = _write(tmp_path, CUSTOM, "clash")
    reg = Registry(lazy={"gamma": "speedrun.no_such_module:Gamma"})
    with pytest.raises(SpeedrunError) as info:
        reg.load_submission_components(path)
    assert f"{path}:Gamma: component name 'gamma' is already registered" in str(info.value)

    failing = _write(tmp_path, "raise RuntimeError('boom')\n", "failing")
    with pytest.raises(SpeedrunError) as info:
        Registry(lazy={}).load_submission_components(failing)
    assert str(info.value) == f"{failing}: importing it raised RuntimeError: boom"

    twice = _write(tmp_path, CUSTOM.replace('name: ClassVar[str] = "delta"', 'name = "gamma"'), "twice")
    with pytest.raises(SpeedrunError, match="component name 'gamma' is already registered"):
        Registry(lazy={}).load_submission_components(twice)


def test_load_submission_components_runs_the_hashed_source_never_cached_bytecode(tmp_path: Path) -> None:
    """Provenance hashes components.py and skips __pycache__: a bytecode file there that claims to
    match (unchecked hash) must not replace the source."""
    import importlib.util
    import py_compile

    path = _write(tmp_path, CUSTOM, "cached")
    decoy = tmp_path / "decoy.py"
    decoy.write_text(CUSTOM.replace('"gamma"', '"decoy"'))
    cache = Path(importlib.util.cache_from_source(str(path)))
    py_compile.compile(str(decoy), cfile=str(cache), invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    assert sorted(Registry(lazy={}).load_submission_components(path)) == ["delta", "epsilon", "gamma"]


def test_component_defaults_do_nothing() -> None:
    comp = Alpha(AlphaParams(weight=0.5))
    assert comp.params.weight == 0.5
    assert comp.hooks() == {} and comp.objective() is None
    with pytest.raises(ValidationError, match="extra"):
        AlphaParams(weight=1.0, extra=1)  # Params forbid unknown keys


def guide_components(heading: str, folder: Path) -> Path:
    """The ```python blocks of CONTRIBUTING.md's section ``heading``, put together literally as a components.py."""
    guide = (Path(__file__).resolve().parents[1] / "CONTRIBUTING.md").read_text()
    start = guide.index(heading)
    end = guide.find("\n## ", start)
    section = guide[start : end if end >= 0 else None]
    folder.mkdir()
    (folder / "components.py").write_text("\n".join(re.findall(r"```python\n(.*?)```", section, re.DOTALL)))
    return folder / "components.py"


def test_contributing_worked_example_assembles_into_the_example_component(tmp_path: Path) -> None:
    # CONTRIBUTING.md section 6 shows the example in pieces; put together literally they must import,
    # register and declare the same parameters as submissions/custom-example/components.py.
    root = Path(__file__).resolve().parents[1]
    path = guide_components("## 6. Custom components", tmp_path / "guide")
    guide_reg, example_reg = Registry(lazy={}), Registry(lazy={})
    assert guide_reg.load_submission_components(path) == ["deep-supervision"]
    example_reg.load_submission_components(root / "submissions" / "custom-example" / "components.py")
    guide_cls, example_cls = guide_reg.get("deep-supervision"), example_reg.get("deep-supervision")
    for method in ("setup", "hooks", "losses"):
        assert method in vars(guide_cls), f"CONTRIBUTING's example lost {method}()"
    fields = {name: (f.annotation, f.default) for name, f in guide_cls.Params.model_fields.items()}
    assert fields == {name: (f.annotation, f.default) for name, f in example_cls.Params.model_fields.items()}


def test_contributing_objective_example_is_a_working_objective(tmp_path: Path) -> None:
    """CONTRIBUTING.md section 7's min-SNR objective: the baseline's times, input and target (so seed s
    stays paired with the baseline's), and each sample's velocity MSE weighted so that the loss is
    min-SNR-gamma's, min(SNR, gamma) times the x0 error."""
    import torch

    from speedrun.flow import Objective, RectifiedFlowObjective, keyed_generator
    from speedrun.protocol import replacing_objective
    from speedrun.tracks import load_track

    registry = Registry(lazy={})
    path = guide_components("## 7. A new objective", tmp_path / "objective-guide")
    assert declared_component_names(path) == ["min-snr"]  # what validate sees without running it
    assert registry.load_submission_components(path) == ["min-snr"]
    cls = registry.get("min-snr")
    comp = cls(cls.Params.model_validate({"gamma": 5.0}))
    track = load_track("smoke")
    comp.setup(SimpleNamespace(track=track))  # setup reads the track only
    objective = replacing_objective([comp])
    assert isinstance(objective, Objective) and objective.prediction == "velocity"
    baseline = RectifiedFlowObjective(track.train.timesteps)

    t = objective.sample_t(8, keyed_generator("t:0:0"), "cpu")
    assert torch.equal(t, baseline.sample_t(8, keyed_generator("t:0:0"), "cpu"))
    gen = torch.Generator().manual_seed(0)
    x0, noise, pred = (torch.randn(8, 3, 4, 4, generator=gen) for _ in range(3))
    x_t, target = objective.input_and_target(x0, noise, t)
    for mine, theirs in zip((x_t, target), baseline.input_and_target(x0, noise, t)):
        assert torch.equal(mine, theirs)

    snr = ((1 - t) / t) ** 2
    x0_error = (x_t - t[:, None, None, None] * pred - x0).pow(2).flatten(1).mean(dim=1)
    expected = (torch.minimum(snr, torch.tensor(5.0)) * x0_error).mean()
    assert torch.allclose(objective.loss(pred, target, x_t, t), expected, rtol=1e-5)
