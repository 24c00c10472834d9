"""Runs mutmut's mutants inside one pytest session: tests collected once, one fork per mutant.

`scripts/mutate.py` generates the mutants with mutmut, then calls `run()`, which starts pytest in
the `mutants/` copy with `MutantRunner` as a plugin. Instead of pytest's own loop:

1. *Measure* (forked workers, in parallel): every selected test runs once on the unmutated code
   under coverage.py with one context per test, so for each line of a mutated module we know which
   tests execute it, and how long each test takes (setup and teardown included).
2. *Check*: a few tests run with mutmut's "fail" mutant active must fail (the trampolines work).
3. *Mutants* (forked workers, in parallel): a child per mutant activates it and runs, in one
   process and without collecting again, the tests that execute the statement it changes
   (a mutant no test reaches survives as "no tests"). The tests that killed earlier mutants of
   the same function run first; the first failure kills the mutant. A wall-clock limit turns a
   hang into "timeout" (a kill).

Forking a process that has already imported and collected everything costs milliseconds, where
mutmut's own runner starts a fresh `pytest.main` (about 1.5 s) for every mutant.
"""

from __future__ import annotations

import ast
import difflib
import gc
import hashlib
import json
import os
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KILLED, SURVIVED, NO_TESTS, TIMEOUT = 1, 0, 33, 36  # mutmut's exit codes, so its tools read them


# ----------------------------------------------------------------------------- which tests


@dataclass
class Function:
    """One mutmut-generated function copy in a mutated file: its line span."""

    name: str
    start: int
    end: int
    text: list[str]


def functions_of(path: Path) -> dict[str, Function]:
    source = path.read_text()
    lines = source.splitlines()
    found = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and "__mutmut_" in node.name:
            end = node.end_lineno or node.lineno
            text = [line.replace(node.name, "FUNC", 1) for line in lines[node.lineno - 1:end]]
            found[node.name] = Function(node.name, node.lineno, end, text)
    return found


def statement_lines(tree: ast.Module) -> dict[int, tuple[int, frozenset[int]]]:
    """Each physical line → (first line of the innermost statement holding it, that statement's
    own lines: its span minus the statements nested in it)."""
    found: dict[int, tuple[int, frozenset[int]]] = {}

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                end = child.end_lineno or child.lineno
                nested = {line for sub in ast.walk(child) if isinstance(sub, ast.stmt)
                          and sub is not child
                          for line in range(sub.lineno, (sub.end_lineno or sub.lineno) + 1)}
                own = frozenset(range(child.lineno, end + 1)) - nested
                for line in own:
                    found[line] = (child.lineno, own)
            visit(child)

    visit(tree)
    return found


@dataclass
class Target:
    """What a mutant changes: its module file, the original function's lines, the changed
    statements' own lines (empty: a change in the signature, reached by any call)."""

    file: str
    function: range
    lines: frozenset[int]


def targets(mutants_root: Path, names: Iterable[str]) -> dict[str, Target]:
    """Name → Target for every mutant, found by diffing each mutant with its original."""
    by_file: dict[Path, list[str]] = defaultdict(list)
    for name in names:
        module = name[: name.index(".x_") if ".x_" in name else name.index(".xǁ")]
        by_file[mutants_root / "src" / (module.replace(".", "/") + ".py")].append(name)
    found = {}
    for path, group in by_file.items():
        funcs = functions_of(path)
        tree = ast.parse(path.read_text())
        stmts = statement_lines(tree)
        for name in group:
            local = name.rsplit(".", 1)[-1]
            orig = funcs[local.rsplit("__mutmut_", 1)[0] + "__mutmut_orig"]
            mutant = funcs.get(local)
            lines: set[int] = set()
            if mutant is not None:
                matcher = difflib.SequenceMatcher(a=orig.text, b=mutant.text, autojunk=False)
                for tag, i1, i2, _, _ in matcher.get_opcodes():
                    if tag == "equal":
                        continue
                    for index in range(i1, max(i2, i1 + 1)):
                        line = orig.start + min(index, len(orig.text) - 1)
                        first, own = stmts.get(line, (orig.start, frozenset()))
                        if first != orig.start:  # not the def line (a default, a decorator)
                            lines |= own
            found[name] = Target(str(path), range(orig.start, orig.end + 1), frozenset(lines))
    return found


@dataclass
class Measured:
    """What the clean run found: tests per executed line, each test's duration, failures."""

    lines: dict[str, dict[int, list[str]]] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    modules: dict[str, str] = field(default_factory=dict)  # test module → hash when measured
    source: str = ""  # hash of the mutated modules and the shared test support when measured

    def forget(self, modules: set[str]) -> None:
        """Drop what the tests of these modules measured (they changed: measure them again)."""
        def stale(test: str) -> bool:
            return test.split("::", 1)[0] in modules

        for by_line in self.lines.values():
            for line, tests in by_line.items():
                by_line[line] = [t for t in tests if not stale(t)]
        self.durations = {t: d for t, d in self.durations.items() if not stale(t)}
        self.failed = [t for t in self.failed if not stale(t)]
        self.modules = {m: h for m, h in self.modules.items() if m not in modules}

    def merge(self, other: Measured) -> None:
        for file, by_line in other.lines.items():
            mine = self.lines.setdefault(file, {})
            for line, tests in by_line.items():
                mine.setdefault(line, []).extend(tests)
        self.durations.update(other.durations)
        self.failed.extend(other.failed)

    def tests_for(self, target: Target) -> set[str]:
        by_line = self.lines.get(target.file, {})
        lines = target.lines or target.function
        found = {t for line in lines for t in by_line.get(line, ())}
        return found - set(self.failed)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"lines": self.lines, "durations": self.durations,
                                    "failed": self.failed, "modules": self.modules,
                                    "source": self.source}))

    @classmethod
    def load(cls, path: Path) -> Measured:
        data = json.loads(path.read_text())
        lines = {f: {int(k): v for k, v in by_line.items()} for f, by_line in data["lines"].items()}
        return cls(lines, data["durations"], data["failed"], data.get("modules", {}),
                   data.get("source", ""))


def digest(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(str(path).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- the plugin


@dataclass
class Options:
    names: list[str]
    files: list[str]  # every mutated module (measured whichever mutants run)
    workers: int
    budget: float  # seconds of (estimated) tests per mutant at most
    stats_file: Path
    progress: Callable[[str], None] = lambda line: print(line, flush=True)
    save: Callable[[dict[str, Outcome]], None] = lambda results: None  # every 50 outcomes


@dataclass
class Outcome:
    status: int
    killer: str = ""
    tests: int = 0
    cut: bool = False  # its tests were cut to the budget
    seconds: float = 0.0


class MutantRunner:
    """A pytest plugin whose run loop measures, checks, then runs the mutants."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.results: dict[str, Outcome] = {}
        self.measured = Measured()
        self._failed: str = ""

    # pytest hooks ------------------------------------------------------------

    def pytest_configure(self, config: Any) -> None:
        from hypothesis import settings

        # Deadlines measure the machine (and the trampolines), not the code: no mutant is
        # killed by a slow example. Derandomised: every mutant meets the same examples.
        settings.register_profile("mutation", deadline=None, derandomize=True, database=None)
        settings.load_profile("mutation")

    def pytest_runtest_makereport(self, item: Any, call: Any) -> Any:
        """A failure's report without its formatted traceback: formatting one looks up every
        loaded module's source file (over a second), and only the failing test's id is used."""
        from _pytest.outcomes import skip
        from _pytest.reports import TestReport

        if call.excinfo is None or call.excinfo.errisinstance(skip.Exception):
            return None
        return TestReport(item.nodeid, item.location, {}, "failed",
                          repr(call.excinfo.value)[:500], call.when, [], call.duration,
                          call.start, call.stop)

    pytest_runtest_makereport.tryfirst = True  # type: ignore[attr-defined]

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.failed and not self._failed:
            self._failed = report.nodeid

    def pytest_runtestloop(self, session: Any) -> bool:
        import stepguard

        self.options.progress(f"collected {len(session.items)} tests")
        assert "mutants" in Path(stepguard.__file__).parts, stepguard.__file__
        items = {item.nodeid: item for item in session.items}
        options = self.options
        files = sorted(str(Path(f).resolve()) for f in options.files)
        support = [*Path("tests").rglob("conftest.py"), *Path("tests/support").rglob("*.py")]
        source = digest([*map(Path, files), *support])
        modules = {m: digest([Path(m)]) for m in {n.split("::", 1)[0] for n in items}}
        measured = Measured()
        if options.stats_file.exists():
            measured = Measured.load(options.stats_file)
            if measured.source != source:
                measured = Measured()
        stale = {m for m, h in modules.items() if measured.modules.get(m) != h}
        measured.forget(stale | (set(measured.modules) - set(modules)))
        if stale:
            started = time.monotonic()
            todo = [item for n, item in items.items() if n.split("::", 1)[0] in stale]
            measured.merge(self._measure(todo, files))
            measured.modules.update({m: modules[m] for m in stale})
            measured.source = source
            measured.save(options.stats_file)
            options.progress(f"measured {len(todo)} tests of {len(stale)} modules in "
                             f"{time.monotonic() - started:.0f} s ({len(measured.failed)} failing: "
                             "left out)")
        self.measured = measured
        self._check(items)
        started = time.monotonic()
        self._run_mutants(items)
        seconds = time.monotonic() - started
        options.progress(f"ran {len(options.names)} mutants in {seconds:.0f} s "
                         f"({len(options.names) / max(seconds, 0.001):.1f}/s)")
        return True

    # running tests in a child ------------------------------------------------

    def _quiet(self, session: Any) -> None:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            session.config.pluginmanager.unregister(reporter)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)

    def _run_items(self, items: list[Any], *, stop_at_failure: bool = True,
                   before: Callable[[Any], None] | None = None,
                   after: Callable[[Any, float], None] | None = None) -> str:
        """Run items in order (fixtures shared as pytest shares them); the first failing id."""
        first = ""
        for index, item in enumerate(items):
            nextitem = items[index + 1] if index + 1 < len(items) else None
            if before is not None:
                before(item)
            started = time.perf_counter()
            self._failed = ""
            item.ihook.pytest_runtest_protocol(item=item, nextitem=nextitem)
            if after is not None:
                after(item, time.perf_counter() - started)
            if self._failed:
                first = first or self._failed
                if stop_at_failure:
                    return first
        return first

    @staticmethod
    def _fork(child: Callable[[], int]) -> int:
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                code = child()
            finally:
                os._exit(code)
        return pid

    # 1. measure --------------------------------------------------------------

    def _measure(self, items: list[Any], files: list[str]) -> Measured:
        from mutmut.mutation.trampoline import set_mutant_under_test

        chunks = partition(items, self.options.workers)
        outputs = [self.options.stats_file.with_suffix(f".{i}.json") for i in range(len(chunks))]

        def measure(chunk: list[Any], output: Path) -> Callable[[], int]:
            def child() -> int:
                import coverage

                set_mutant_under_test("")
                self._quiet(chunk[0].session)
                result = Measured()
                cov = coverage.Coverage(data_file=None, include=files, branch=False,
                                        config_file=False)

                def after(item: Any, seconds: float) -> None:
                    result.durations[item.nodeid] = seconds
                    if self._failed:
                        result.failed.append(item.nodeid)

                cov.start()
                self._run_items(chunk, stop_at_failure=False, after=after,
                                before=lambda item: cov.switch_context(item.nodeid))
                cov.stop()
                data = cov.get_data()
                for file in data.measured_files():
                    result.lines[file] = {line: sorted(c for c in contexts if c)
                                          for line, contexts in
                                          data.contexts_by_lineno(file).items()}
                result.save(output)
                return 0
            return child

        pids = [self._fork(measure(chunk, out)) for chunk, out in zip(chunks, outputs, strict=True)]
        for pid in pids:
            os.waitpid(pid, 0)
        total = Measured()
        for out in outputs:
            total.merge(Measured.load(out))
            out.unlink()
        return total

    # 2. check ----------------------------------------------------------------

    def _check(self, items: dict[str, Any]) -> None:
        """mutmut's "fail" mutant raises in every trampoline: the fastest tests that reach a
        mutated function must fail with it, or the run would count nothing."""
        from mutmut.mutation.trampoline import set_mutant_under_test

        found = targets(Path.cwd(), self.options.names)
        reached = sorted({t for target in found.values() for t in self.measured.tests_for(
            Target(target.file, target.function, frozenset())) if t in items},
                         key=lambda t: self.measured.durations.get(t, 0.0))[:3]
        assert reached, "no test reaches a mutated module"

        def child() -> int:
            set_mutant_under_test("fail")
            self._quiet(items[reached[0]].session)
            return 1 if self._run_items([items[t] for t in reached]) else 0

        _, status = os.waitpid(self._fork(child), 0)
        assert os.waitstatus_to_exitcode(status) == 1, "the 'fail' mutant did not fail a test"

    # 3. mutants --------------------------------------------------------------

    def _plan(self, name: str, target: Target, items: dict[str, Any],
              killers: Counter[str]) -> tuple[list[str], float, bool]:
        durations = self.measured.durations
        tests = [t for t in self.measured.tests_for(target) if t in items]
        tests.sort(key=lambda t: (-killers[t], durations.get(t, 0.0), t))
        chosen, spent = [], 0.0
        for test in tests:
            if chosen and spent + durations.get(test, 0.0) > self.options.budget:
                return chosen, spent, True
            chosen.append(test)
            spent += durations.get(test, 0.0)
        return chosen, spent, False

    def _run_mutants(self, items: dict[str, Any]) -> None:
        from mutmut.mutation.trampoline import set_mutant_under_test

        options = self.options
        found = targets(Path.cwd(), options.names)
        killers: dict[str, Counter[str]] = defaultdict(Counter)  # function → killing tests
        queue = sorted(options.names, key=lambda n: (found[n].file, found[n].function.start, n))
        running: dict[int, tuple[str, float, int, list[str], bool, float]] = {}
        done, started = 0, time.monotonic()
        session = next(iter(items.values())).session
        gc.collect()
        gc.freeze()  # children inherit a stable heap: no copy-on-write storm from the collector

        def start(name: str) -> None:
            function = name.rsplit("__mutmut_", 1)[0]
            tests, estimate, cut = self._plan(name, found[name], items, killers[function])
            if not tests:
                self.results[name] = Outcome(NO_TESTS)
                return
            read, write = os.pipe()

            def child() -> int:
                os.close(read)
                set_mutant_under_test(name)
                self._quiet(session)
                killer = self._run_items([items[t] for t in tests])
                os.write(write, killer.encode()[:4000])
                return KILLED if killer else SURVIVED

            began = time.monotonic()
            pid = self._fork(child)
            os.close(write)
            deadline = time.monotonic() + max(20.0, 5 * estimate)
            running[pid] = (name, deadline, read, tests, cut, began)

        while queue or running:
            while queue and len(running) < options.workers:
                start(queue.pop(0))
            if not running:
                continue
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                now = time.monotonic()
                for late, (_, deadline, *_rest) in list(running.items()):
                    if now > deadline:
                        os.kill(late, signal.SIGKILL)
                time.sleep(0.005)
                continue
            if pid not in running:
                continue
            name, deadline, read, tests, cut, began = running.pop(pid)
            killer = os.read(read, 4096).decode()
            os.close(read)
            code = os.waitstatus_to_exitcode(status)
            if code == KILLED and killer:
                killers[name.rsplit("__mutmut_", 1)[0]][killer] += 1
                outcome = Outcome(KILLED, killer, len(tests), cut)
            elif code == SURVIVED:
                outcome = Outcome(SURVIVED, "", len(tests), cut)
            else:  # killed by the deadline, or the mutant broke the process itself
                outcome = Outcome(TIMEOUT if time.monotonic() > deadline else KILLED, "",
                                  len(tests), cut)
            outcome.seconds = time.monotonic() - began
            self.results[name] = outcome
            done += 1
            if done % 50 == 0:
                options.save(self.results)
            if done % 100 == 0:
                rate = done / (time.monotonic() - started)
                options.progress(f"  {done}/{len(options.names)} mutants, {rate:.1f}/s")
        gc.unfreeze()


def partition(items: list[Any], parts: int) -> list[list[Any]]:
    """Items split into `parts` runs of whole test modules, of similar size, order kept."""
    modules: dict[str, list[Any]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    chunks: list[list[Any]] = [[] for _ in range(max(1, parts))]
    for group in sorted(modules.values(), key=len, reverse=True):
        min(chunks, key=len).extend(group)
    return [c for c in chunks if c]


def run(options: Options, pytest_args: list[str]) -> dict[str, Outcome]:
    """Run pytest in `mutants/` (the cwd) with the runner as its loop; the mutants' outcomes."""
    import pytest

    runner = MutantRunner(options)
    pytest.main(["--rootdir=.", "-q", "-p", "no:randomly", *pytest_args], plugins=[runner])
    return runner.results
