"""The developer gates: the per-package coverage gate and the mutation script's helpers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gate = load("coverage_gate")
mutate = load("mutate")


def report(**packages: tuple[int, int, int, int]) -> dict[str, object]:
    files = {}
    for name, (lines, hit, branches, bhit) in packages.items():
        files[f"/x/src/stepguard/{name}/mod.py"] = {"summary": {
            "num_statements": lines, "covered_lines": hit,
            "num_branches": branches, "covered_branches": bhit}}
    files["/x/src/stepguard/cli/main.py"] = {"summary": {
        "num_statements": 100, "covered_lines": 0, "num_branches": 0, "covered_branches": 0}}
    return {"files": files}


def at(name: str, lines: float = 0.0, branches: float = 0.0) -> tuple[int, int, int, int]:
    """1,000 lines and 1,000 branches covered at the package's floors plus the given offsets."""
    floor_lines, floor_branches = gate.FLOORS[name]
    return (1000, round(10 * (floor_lines + lines)), 1000, round(10 * (floor_branches + branches)))


def test_the_gate_passes_when_every_package_is_at_its_floor() -> None:
    good = report(**{name: at(name) for name in gate.FLOORS})
    assert gate.problems(gate.tally(good)) == []


def test_the_gate_names_each_package_and_measure_below_its_floor() -> None:
    bad = report(core=at("core", lines=-0.1), service=at("service", branches=-0.1),
                 adapters=at("adapters"))
    found = gate.problems(gate.tally(bad))
    core, service = gate.FLOORS["core"][0], gate.FLOORS["service"][1]
    assert any(p.startswith(f"core: lines {core - 0.1:.1f}% < {core:.0f}%") for p in found)
    assert any(p.startswith(f"service: branches {service - 0.1:.1f}% < {service:.0f}%")
               for p in found)
    assert any(p.startswith("web: no measured lines") for p in found)
    assert not any(p.startswith("adapters") for p in found)
    assert len(found) == 3


def test_the_gate_fails_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json
    path = tmp_path / "coverage.json"
    path.write_text(json.dumps(report(core=(10, 5, 0, 0))))
    assert gate.main(["gate", str(path)]) == 1
    assert "COVERAGE GATE FAILED - core: lines 50.0%" in capsys.readouterr().err


def test_package_of() -> None:
    assert gate.package_of("/a/src/stepguard/core/decide.py") == "core"
    assert gate.package_of("src/stepguard/web/templates/x.py") == "web"
    assert gate.package_of("/a/src/stepguard/cli/main.py") is None
    assert gate.package_of("/a/other/core/x.py") is None


@pytest.mark.parametrize(("original", "mutant", "message_only"), [
    ('raise X("That code is not right")', 'raise X("XXThat code is not rightXX")', True),
    ('return f"needs {level} now"', 'return f"XXneeds {level} nowXX"', True),
    ('if status != "pending": pass', 'if status != "XXpendingXX": pass', False),
    ('if a < b: pass', 'if a <= b: pass', False),
    ('x = "a b"', 'x = None', False),
    ('x = "a b"', 'x = "a b"', False),
])
def test_message_only_mutants(original: str, mutant: str, message_only: bool) -> None:
    assert mutate.is_message_only(original, mutant) is message_only


runner = load("mutant_runner")

MUTATED = '''\
def x_f__mutmut_orig(a, b=1):
    total = (a +
             b)
    if total > 3:
        return "big"
    return "small"


def x_f__mutmut_1(a, b=1):
    total = (a +
             b)
    if total >= 3:
        return "big"
    return "small"


def x_f__mutmut_2(a, b=1):
    total = (a -
             b)
    if total > 3:
        return "big"
    return "small"


def x_f__mutmut_3(a, b=2):
    total = (a +
             b)
    if total > 3:
        return "big"
    return "small"
'''


def test_a_mutant_targets_the_own_lines_of_the_statement_it_changes(tmp_path: Path) -> None:
    module = tmp_path / "src" / "pkg" / "mod.py"
    module.parent.mkdir(parents=True)
    module.write_text(MUTATED)
    found = runner.targets(tmp_path, ["pkg.mod.x_f__mutmut_1", "pkg.mod.x_f__mutmut_2",
                                      "pkg.mod.x_f__mutmut_3"])
    assert found["pkg.mod.x_f__mutmut_1"].lines == {4}  # the `if` line, not its body
    assert found["pkg.mod.x_f__mutmut_2"].lines == {2, 3}  # the whole two-line statement
    assert found["pkg.mod.x_f__mutmut_3"].lines == frozenset()  # the signature: any call
    assert found["pkg.mod.x_f__mutmut_3"].function == range(1, 7)


def test_a_mutant_runs_the_tests_that_execute_its_statement() -> None:
    measured = runner.Measured(lines={"m.py": {2: ["t1"], 3: ["t2"], 4: ["t3"], 5: ["t4"]}},
                               failed=["t4"])
    assert measured.tests_for(runner.Target("m.py", range(1, 7), frozenset({2, 3}))) \
        == {"t1", "t2"}
    assert measured.tests_for(runner.Target("m.py", range(1, 7), frozenset())) \
        == {"t1", "t2", "t3"}  # a failing test never counts


def test_measurements_of_a_changed_test_module_are_forgotten() -> None:
    measured = runner.Measured(lines={"m.py": {2: ["a.py::t", "b.py::t"]}},
                               durations={"a.py::t": 1.0, "b.py::t": 2.0},
                               modules={"a.py": "h1", "b.py": "h2"})
    measured.forget({"a.py"})
    assert measured.lines == {"m.py": {2: ["b.py::t"]}}
    assert (measured.durations, measured.modules) == ({"b.py::t": 2.0}, {"b.py": "h2"})


def test_tests_are_split_in_whole_modules() -> None:
    class Item:
        def __init__(self, nodeid: str) -> None:
            self.nodeid = nodeid

    items = [Item(f"{m}.py::t{i}") for m, n in (("a", 3), ("b", 2), ("c", 2)) for i in range(n)]
    chunks = runner.partition(items, 2)
    assert sorted(len(c) for c in chunks) == [3, 4]
    for chunk in chunks:
        modules = [i.nodeid.split("::")[0] for i in chunk]
        assert all(modules.count(m) == sum(i.nodeid.startswith(m) for i in items)
                   for m in modules)


def test_an_equivalent_judged_for_one_mutant_does_not_pass_for_another(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mutmut numbers a changed function's mutants anew: a listed name whose change is not the
    one judged (its fingerprint) counts for nothing and is reported."""
    import json

    module = tmp_path / "src" / "pkg" / "mod.py"
    module.parent.mkdir(parents=True)
    module.write_text(MUTATED)
    names = ["pkg.mod.x_f__mutmut_1", "pkg.mod.x_f__mutmut_2", "pkg.mod.x_f__mutmut_3"]
    module.with_suffix(".py.meta").write_text(json.dumps(
        {"exit_code_by_key": dict.fromkeys(names, 0)}))
    mutants = mutate.Mutants(tmp_path)
    first, second = (mutate.fingerprint(mutants, n) for n in names[:2])
    assert first != second and len(first) == 12
    listed = tmp_path / "equivalent.txt"
    listed.write_text(f"# judged\n{names[0]}  sha={first}  the reason\n"
                      f"{names[1]}  sha={first}  judged when it was another mutant\n"
                      f"{names[2]}  an old line without a fingerprint\n")
    monkeypatch.setattr(mutate, "EQUIVALENT", listed)
    assert mutate.equivalents()[names[0]] == (first, "the reason")
    judged, changed = mutate.judged_equivalent(mutants)
    assert judged == {names[0]} and changed == names[1:]
