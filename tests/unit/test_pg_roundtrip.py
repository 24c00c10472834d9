"""The round trip's shapes (pgwire/roundtrip.py) and the compiled twins (stepguard/compiled.py).

The same source runs as Python and, when built (`scripts/accelerate.py`), compiled with mypyc:
both must give the same answers, and a twin built from other sources must never be used.
`make test` builds the twins first, so there both are compared; set STEPGUARD_TWINS=required to
fail instead of skipping when they are missing.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepguard import compiled
from stepguard.pgwire import messages as m
from stepguard.pgwire import roundtrip, session, tracking, turn

QUERY = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;"


def parse(sql: bytes = QUERY, name: bytes = b"") -> bytes:
    return m.message(b"P", name + b"\0" + sql + b"\0" + struct.pack("!h", 0))


def bind(value: bytes = b"42", portal: bytes = b"", statement: bytes = b"") -> bytes:
    return m.message(b"B", portal + b"\0" + statement + b"\0"
                     + struct.pack("!hhi", 0, 1, len(value)) + value + struct.pack("!h", 0))


def client_cycle(value: bytes = b"42") -> bytes:
    return parse() + bind(value) + roundtrip.CYCLE_TAIL


def answer(rows: int = 1, *, described: bool = True, extra: bytes = b"") -> bytes:
    head = (m.message(b"T", struct.pack("!h", 1) + b"abalance\0"
                      + struct.pack("!ihihih", 0, 0, 23, 4, -1, 0))
            if described else m.message(b"n"))
    body = b"".join(m.message(b"D", struct.pack("!hi", 1, 1) + b"0") for _ in range(rows))
    return (roundtrip.PARSED_BOUND + head + body + extra
            + m.message(b"C", f"SELECT {rows}".encode() + b"\0") + m.message(b"Z", b"I"))


def twin_of(module: ModuleType) -> ModuleType | None:
    found = compiled.twin(module)
    if found is module:
        if os.environ.get("STEPGUARD_TWINS") == "required":
            pytest.fail(f"the compiled twin of {module.__name__} is missing or stale "
                        "(run scripts/accelerate.py)")
        return None
    return found


IMPLEMENTATIONS = [pytest.param(roundtrip, id="python"),
                   pytest.param("compiled", id="compiled")]


def implementation(request: pytest.FixtureRequest, module: ModuleType) -> ModuleType:
    """`module` as Python or as its compiled twin, by the fixture's parameter (a test of the
    compiled one is skipped when no twin is built)."""
    if request.param == "compiled":
        found = twin_of(module)
        if found is None:
            pytest.skip("no compiled twin (scripts/accelerate.py not run)")
        return found
    return module


@pytest.fixture(params=IMPLEMENTATIONS)
def shapes(request: pytest.FixtureRequest) -> ModuleType:
    return implementation(request, roundtrip)


# ---------------------------------------------------------------------- the client's round trip


def test_a_round_trip_gives_the_end_of_its_parse(shapes: ModuleType) -> None:
    data = client_cycle()
    assert shapes.round_trip(data, 1 << 20) == len(parse())
    assert shapes.round_trip(parse(b"SELECT 1") + bind(b"") + roundtrip.CYCLE_TAIL,
                             1 << 20) == len(parse(b"SELECT 1"))


@pytest.mark.parametrize("data", [
    pytest.param(parse() + bind(portal=b"p") + roundtrip.CYCLE_TAIL, id="named portal"),
    pytest.param(parse() + bind(statement=b"s") + roundtrip.CYCLE_TAIL, id="named statement"),
    pytest.param(parse() + bind() + roundtrip.CYCLE_TAIL[:-5], id="no sync"),
    pytest.param(parse() + bind() + roundtrip.CYCLE_TAIL + m.message(b"S"), id="more after"),
    pytest.param(parse() + bind() + m.message(b"D", b"S\0") + roundtrip.CYCLE_TAIL[7:],
                 id="describes the statement"),
    pytest.param(parse() + bind() + roundtrip.CYCLE_TAIL.replace(b"\0\0\0\0\0S",
                                                                 b"\0\0\0\0\x01S"),
                 id="a row limit"),
    pytest.param(b"Q" + client_cycle()[1:], id="not a parse"),
    pytest.param(parse() + b"C" + bind()[1:] + roundtrip.CYCLE_TAIL, id="not a bind"),
    pytest.param(client_cycle()[:39], id="too short"),
])
def test_anything_else_is_no_round_trip(shapes: ModuleType, data: bytes) -> None:
    assert shapes.round_trip(data, 1 << 20) == 0


def test_a_bind_over_the_message_limit_or_with_a_bad_length_is_no_round_trip(
        shapes: ModuleType) -> None:
    value = b"x" * 100
    data = parse() + bind(value) + roundtrip.CYCLE_TAIL
    body = len(bind(value)) - 5
    assert shapes.round_trip(data, body) == len(parse())
    assert shapes.round_trip(data, body - 1) == 0
    start = len(parse())
    for length in (0, 4, 5, len(bind(value)) - 2, 1 << 30):  # below 6, or not where it ends
        bad = data[:start + 1] + struct.pack("!I", length) + data[start + 5:]
        assert shapes.round_trip(bad, 1 << 31) == 0
    for length in (0, 3, 1 << 30):  # a parse length that ends nowhere sensible
        assert shapes.round_trip(b"P" + struct.pack("!I", length) + data[5:], 1 << 31) == 0


# ---------------------------------------------------------------------- the server's answer


@pytest.mark.parametrize("rows", [0, 1, 3])
def test_the_whole_answer_is_recognised(shapes: ModuleType, rows: int) -> None:
    assert shapes.whole_answer(answer(rows))
    assert shapes.whole_answer(answer(rows, described=False))


@pytest.mark.parametrize("data", [
    pytest.param(answer(extra=m.message(b"N", b"Snotice\0\0")), id="a notice among rows"),
    pytest.param(answer(extra=m.message(b"E", b"SERROR\0\0")), id="an error"),
    pytest.param(answer(extra=m.message(b"S", b"a\0b\0")), id="a setting"),
    pytest.param(answer()[:-6], id="no ready"),
    pytest.param(answer() + m.message(b"Z", b"I"), id="two readies"),
    pytest.param(answer()[:-6] + m.message(b"Z", b"II"), id="a long ready"),
    pytest.param(answer()[5:], id="no parse complete"),
    pytest.param(answer().replace(b"T", b"X", 1), id="no description"),
    pytest.param(answer()[:10] + answer()[10:].replace(b"C", b"I", 1), id="no command complete"),
    pytest.param(answer()[:20], id="cut"),
])
def test_anything_else_is_not_the_whole_answer(shapes: ModuleType, data: bytes) -> None:
    assert not shapes.whole_answer(data)


# ---------------------------------------------------------------------- the same answers


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.integers(min_value=0, max_value=200), st.booleans())
def test_compiled_and_python_give_the_same_answers(tail: bytes, cut: int, real: bool) -> None:
    other = twin_of(roundtrip)
    if other is None:
        pytest.skip("no compiled twin (scripts/accelerate.py not run)")
    for data in (client_cycle()[:cut] + tail, answer()[:cut] + tail,
                 (client_cycle() if real else answer())[:max(cut, 40)] + tail[:3]):
        assert other.round_trip(data, 64) == roundtrip.round_trip(data, 64)
        assert other.whole_answer(data) == roundtrip.whole_answer(data)


# ---------------------------------------------------------------------- twins


def test_the_door_runs_compiled_when_built() -> None:
    for module in (roundtrip, tracking, turn, session):
        found = twin_of(module)
        if found is None:
            pytest.skip("no compiled twins (scripts/accelerate.py not run)")
        assert found.__name__ == compiled.twin_name(module.__name__)
        assert found.COMPILED_WITH == ("stepguard.pgwire.roundtrip", "stepguard.pgwire.tracking",
                                       "stepguard.pgwire.turn", "stepguard.pgwire.session")


def test_pure_is_forced_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPGUARD_PURE", "1")
    assert compiled.twin(roundtrip) is roundtrip


def test_a_module_without_a_twin_serves_itself() -> None:
    assert compiled.twin(m) is m


def test_a_twin_built_from_other_sources_is_not_used(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A twin records its group and the digest of the group's sources: any edit of any member
    (or a member that is gone) makes it stale, and the source serves instead."""
    monkeypatch.delenv("STEPGUARD_PURE", raising=False)
    package = tmp_path / "twinpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "shape.py").write_text("ANSWER = 'source'\n")
    (package / "other.py").write_text("X = 1\n")
    group = ("twinpkg.shape", "twinpkg.other")
    digest = compiled.sources_digest([package / "shape.py", package / "other.py"])
    (package / "_shape_compiled.py").write_text(
        f"ANSWER = 'twin'\nCOMPILED_WITH = {group!r}\nCOMPILED_FROM = {digest!r}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    shape = importlib.import_module("twinpkg.shape")
    assert compiled.twin(shape).ANSWER == "twin"
    (package / "other.py").write_text("X = 2\n")  # another member of the group changed
    with caplog.at_level("WARNING", logger="stepguard.compiled"):
        assert compiled.twin(shape) is shape
    assert "compiled from other sources" in caplog.text
    (package / "other.py").write_text("X = 1\n")
    assert compiled.twin(shape).ANSWER == "twin"
    (package / "other.py").unlink()  # a member that is gone
    assert compiled.twin(shape) is shape
    (package / "_shape_compiled.py").write_text(  # a twin that does not name its module
        f"ANSWER = 'twin'\nCOMPILED_WITH = ('twinpkg.x',)\nCOMPILED_FROM = {digest!r}\n")
    importlib.invalidate_caches()
    import sys

    sys.modules.pop("twinpkg._shape_compiled", None)
    assert compiled.twin(shape) is shape
