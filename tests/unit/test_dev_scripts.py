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


def test_the_gate_passes_when_every_package_is_at_its_floor() -> None:
    good = report(core=(100, 95, 20, 19), service=(10, 9, 10, 9), adapters=(10, 10, 0, 0),
                  web=(100, 90, 10, 10))
    assert gate.problems(gate.tally(good)) == []


def test_the_gate_names_each_package_and_measure_below_its_floor() -> None:
    bad = report(core=(100, 94, 20, 20), service=(10, 10, 100, 70), adapters=(10, 10, 0, 0))
    found = gate.problems(gate.tally(bad))
    assert any(p.startswith("core: lines 94.0% < 95%") for p in found)
    assert any(p.startswith("service: branches 70.0% < 77%") for p in found)
    assert any(p.startswith("web: no measured lines") for p in found)
    assert not any(p.startswith("adapters") for p in found)


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
