"""The decision benchmark's equivalence check (bench/decision.py) runs, and can fail.

No timing is asserted: this only keeps the generator, the floor, the Cedar translation and the
report from rotting, and proves the agreement check catches a wrong engine or overlapping rules.
"""

from __future__ import annotations

import dataclasses

import pytest

cedarpy = pytest.importorskip("cedarpy")

from bench import decision as bench  # noqa: E402

from stepguard.core.decide import decide  # noqa: E402
from stepguard.core.decision import Outcome  # noqa: E402


@pytest.mark.parametrize(("rules", "requests"), [(50, 600), (500, 250)])
def test_three_engines_agree_on_a_sample(rules: int, requests: int) -> None:
    disagreements, tally = bench.run_equivalence(rules, requests, seed=7)
    assert disagreements == []
    # The sample exercises every outcome and both rules and the default, so agreement means
    # something.
    assert all(tally[o.value] > 0 for o in Outcome)
    assert tally["rule"] > requests / 3 and tally["default"] > 0
    assert tally["matched"] > tally["rule"]


def test_generation_is_deterministic_and_sized() -> None:
    first, again = bench.generate_policy(50, seed=3), bench.generate_policy(50, seed=3)
    assert first.document() == again.document()
    assert len(bench.generate_policy(500, seed=3).rules) == 500
    names = [r.name for r in bench.generate_policy(500, seed=3).rules]
    assert len(set(names)) == len(names) and "default" not in names


def test_a_wrong_engine_is_reported() -> None:
    sample = bench.prepare(40, 300, seed=11)
    results = [cedarpy.is_authorized(*call) for call in sample.cedar_calls]
    victim = next(c for c in sample.stepguard_calls
                  if decide(*c).outcome is Outcome.ALLOW)[1]

    def lenient_floor(b: bench.Bench, i: int) -> bench.Verdict:
        verdict = bench.floor_verdict(b, i)
        if b.cases[i].context is victim:
            return Outcome.STEP_UP, verdict[1]
        return verdict

    disagreements, _ = bench.check_agreement(sample, results, floor_fn=lenient_floor)
    assert [d.request for d in disagreements] == [f"{victim.method} {victim.host}{victim.path}"]


def test_overlapping_rules_are_reported() -> None:
    spec = bench.generate_policy(30, seed=5)
    first = spec.rules[0]
    twin = dataclasses.replace(first, name=first.name + "-twin", methods=(), groups=(),
                               condition=None, outcome="allow")
    spec = bench.PolicySpec((*spec.rules, twin), spec.hosts)
    cases = bench.generate_cases(spec, 400, seed=5)
    sample = bench.prepare_spec(spec, cases)
    results = [cedarpy.is_authorized(*call) for call in sample.cedar_calls]
    disagreements, _ = bench.check_agreement(sample, results)
    assert disagreements
    assert any("matches 2 rules" in d.note for d in disagreements)


def test_the_report_runs_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--requests", "200", "--sizes", "20,60"]) == 0
    out = capsys.readouterr().out
    assert "stepguard 20 rules: mean" in out and "cedarpy" in out and "floor" in out
    assert out.count("PASS") + out.count("MISS") == 3
    assert "0 disagreements" in out
