"""`make mutate`: mutation testing of the security-critical layer with mutmut 3.

    python scripts/mutate.py [--max-children N] [--budget SECONDS] [--sample N]
                             [--keep [--resume | --survivors]] [--recheck-equivalent]

Which modules are mutated and which tests may run is `[tool.mutmut]` in pyproject.toml. On top of
mutmut this script

* leaves out mutants that only change the wording of a human-readable message (a string with a
  space in it: error texts, reasons); strings that are identifiers ("pending", header names,
  "sha256:") are mutated,
* mutates only the verification half of the audit ledger (`LEDGER_VERIFY`),
* runs each mutant against the fastest tests that cover its function (mutmut's own coverage
  map, measured on the clean run), as many as fit in `--budget` seconds, so the run stays near
  20 minutes on 2 cores,
* prints the kill rate and every surviving mutant, excluding the survivors judged equivalent in
  tests/mutation/equivalent.txt (one `mutant-name  sha=<fingerprint>  reason` per line; the
  fingerprint is a hash of the mutant's change, printed beside every survivor: when the function
  changes, mutmut numbers its mutants anew and a judgement made for one mutant must not pass
  for another, so an entry whose fingerprint no longer matches counts for nothing and is
  listed), and fails below `TARGET`.
  The judged ones are not run again (each would spend its whole budget surviving) unless
  `--recheck-equivalent` asks for it.

A timeout counts as killed (the mutant made the code hang). "No tests" counts as survived.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import fnmatch
import hashlib
import io
import json
import os
import shutil
import sys
import time
import tokenize
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT = ROOT / "tests" / "mutation" / "equivalent.txt"
TARGET = 95.0
LEDGER_VERIFY = [  # the ledger's verify: verify_chain, its helpers, hashing, checkpoints
    "stepguard.audit.ledger.x_verify_*", "stepguard.audit.ledger.x_entry_hash*",
    "stepguard.audit.ledger.x_content_fields*", "stepguard.audit.ledger.x__canonical*",
    "stepguard.audit.ledger.x_checkpoint_payload*", "stepguard.audit.ledger.x__start_link*",
    "stepguard.audit.ledger.x__remember*", "stepguard.audit.ledger.x__check_entry*",
    "stepguard.audit.ledger.x__check_time*", "stepguard.audit.ledger.x__check_head*",
    "stepguard.audit.ledger.x__sealed_seq*", "stepguard.audit.ledger.x__seal_candidates*",
    "stepguard.audit.ledger.x__diagnose*", "stepguard.audit.ledger.x__fork*",
    "stepguard.audit.ledger.x__relabelled*", "stepguard.audit.ledger.x__gap*",
    "stepguard.audit.ledger.x__backwards*", "stepguard.audit.ledger.xǁ_Lookaheadǁ*",
    "stepguard.audit.ledger.xǁVerifyReportǁ*",
]
KILLED = {"killed", "timeout", "caught by type check", "segfault"}


# ----------------------------------------------------------------------------- mutant sources


def function_sources(mutated_file: Path) -> dict[str, str]:
    """Every function in a mutmut-generated file, by its (mangled) name, name-normalised."""
    source = mutated_file.read_text()
    lines = source.splitlines()
    found = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and "__mutmut_" in node.name:
            text = "\n".join(lines[node.lineno - 1:node.end_lineno]).strip()
            found[node.name] = text.replace(node.name, "FUNC", 1)
    return found


def _tokens(text: str) -> list[tuple[int, str]]:
    return [(t.type, t.string) for t in tokenize.generate_tokens(io.StringIO(text).readline)
            if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE)]


def is_message_only(original: str, mutant: str) -> bool:
    """True when the mutant changes only the wording of human-readable strings."""
    changed = [x + y for x, y in zip(original.splitlines(), mutant.splitlines(), strict=False)
               if x != y]
    if not any('"' in line or "'" in line for line in changed):
        return False
    a, b = _tokens(original), _tokens(mutant)
    if len(a) != len(b):
        return False
    changed = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    return bool(changed) and all(
        x[0] == y[0] == tokenize.STRING and " " in x[1] for x, y in changed)


def diff(original: str, mutant: str) -> str:
    lines = difflib.unified_diff(original.splitlines(), mutant.splitlines(), lineterm="", n=0)
    return "\n".join(f"        {line}" for line in lines if line[:1] in "+-"
                     and not line.startswith(("+++", "---")))


class Mutants:
    """The generated mutants: name → (module file, function, status)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.status: dict[str, int | None] = {}
        self.meta_of: dict[str, Path] = {}
        for meta in sorted(root.glob("src/**/*.py.meta")):
            for key, code in json.loads(meta.read_text())["exit_code_by_key"].items():
                self.status[key] = code
                self.meta_of[key] = meta
        self._sources: dict[Path, dict[str, str]] = {}

    def source(self, name: str) -> tuple[str, str]:
        """(original, mutant) source of the function a mutant changes."""
        meta = self.meta_of[name]
        py = meta.with_suffix("")
        if py not in self._sources:
            self._sources[py] = function_sources(py)
        funcs = self._sources[py]
        local = name.rsplit(".", 1)[-1] if "ǁ" not in name else name[name.index("xǁ"):]
        original = local.rsplit("__mutmut_", 1)[0] + "__mutmut_orig"
        return funcs.get(original, ""), funcs.get(local, "")

    def selected(self) -> tuple[list[str], int, int]:
        """Names to run, and how many were left out as message-only or outside the ledger's
        verification half."""
        chosen, messages, outside = [], 0, 0
        for name in self.status:
            if ".audit.ledger." in name and not any(fnmatch.fnmatch(name, g)
                                                    for g in LEDGER_VERIFY):
                outside += 1
            elif is_message_only(*self.source(name)):
                messages += 1
            else:
                chosen.append(name)
        return chosen, messages, outside


# ----------------------------------------------------------------------------- running mutmut


def generate() -> None:
    from mutmut.__main__ import copy_also_copy_files, copy_src_dir, create_mutants

    Path("mutants").mkdir(exist_ok=True)
    copy_src_dir()
    copy_also_copy_files()
    create_mutants(os.cpu_count() or 2)


def run(names: list[str], *, workers: int, budget: float) -> dict[str, object]:
    """Each mutant against the tests that execute the statement it changes (mutant_runner),
    its exit code written to mutmut's meta files so `mutmut results` / `show` read them."""
    from mutmut.configuration import config
    from mutmut.utils.file_utils import setup_source_paths

    sys.path.insert(0, str(ROOT / "scripts"))
    import mutant_runner

    setup_source_paths()
    cfg = config()
    files = [str(m.with_suffix("")) for m in sorted((ROOT / "mutants").glob("src/**/*.py.meta"))]
    options = mutant_runner.Options(names=names, files=files, workers=workers, budget=budget,
                                    stats_file=ROOT / "mutants" / "mutate-stats.json")
    os.chdir(ROOT / "mutants")
    try:
        options.save = save
        results = mutant_runner.run(options, [*cfg.pytest_add_cli_args_test_selection,
                                              *cfg.pytest_add_cli_args])
    finally:
        os.chdir(ROOT)
    save(results)
    return dict(results)


def save(results: dict[str, Any]) -> None:
    """Outcomes into mutmut's meta files (`mutmut results` / `show` read them) and a log."""
    metas: dict[Path, dict[str, Any]] = {}
    mutants = Mutants(ROOT / "mutants")
    for name, outcome in results.items():
        meta = mutants.meta_of[name]
        data = metas.setdefault(meta, json.loads(meta.read_text()))
        data["exit_code_by_key"][name] = outcome.status
    for meta, data in metas.items():
        meta.write_text(json.dumps(data, indent=4))
    log = ROOT / "mutants" / "mutate-results.json"
    previous = json.loads(log.read_text()) if log.exists() else {}
    log.write_text(json.dumps({**previous, **{n: vars(o) for n, o in results.items()}}, indent=1))


def equivalents() -> dict[str, tuple[str, str]]:
    """name → (fingerprint, reason) of each survivor judged equivalent."""
    found = {}
    if EQUIVALENT.exists():
        for line in EQUIVALENT.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                name, _, rest = line.strip().partition(" ")
                mark, _, why = rest.strip().partition(" ")
                if not mark.startswith("sha="):
                    mark, why = "sha=", rest
                found[name] = (mark[4:], why.strip())
    return found


def fingerprint(mutants: Mutants, name: str) -> str:
    """A hash of what the mutant changes (its diff against the original function)."""
    return hashlib.sha256(diff(*mutants.source(name)).encode()).hexdigest()[:12]


def judged_equivalent(mutants: Mutants) -> tuple[set[str], list[str]]:
    """(the listed mutants whose change is the one judged, the listed ones that changed)."""
    judged, changed = set(), []
    for name, (mark, _) in equivalents().items():
        if name in mutants.status and mark == fingerprint(mutants, name):
            judged.add(name)
        elif name in mutants.status:
            changed.append(name)
    return judged, changed


def status_name(code: int) -> str:
    from mutmut.__main__ import status_by_exit_code

    return str(status_by_exit_code[code])


def module_of(name: str) -> str:
    return name[: name.index(".x_") if ".x_" in name else name.index(".xǁ")]


def report(mutants: Mutants, names: list[str], skipped: tuple[int, int], seconds: float) -> int:
    from mutmut.__main__ import status_by_exit_code

    judged, changed = judged_equivalent(mutants)
    status = {n: status_by_exit_code[mutants.status[n]] if mutants.status[n] is not None
              else "not run (judged equivalent)" for n in names}
    killed = [n for n in names if status[n] in KILLED]
    survived = [n for n in names if status[n] not in KILLED]
    equivalent = [n for n in survived if n in judged]
    real = [n for n in survived if n not in judged]
    counted = len(names) - len(equivalent)
    rate = 100.0 * len(killed) / counted if counted else 100.0
    print("\nSurviving mutants (not judged equivalent):")
    for name in real:
        print(f"  {name}  sha={fingerprint(mutants, name)}: {status[name]}\n"
              f"{diff(*mutants.source(name))}")
    if changed:
        print("\nListed as equivalent, but the mutant of that name changes something else now "
              "(its function changed): judge it again and update its line:")
        print("\n".join(f"  {n}  sha={fingerprint(mutants, n)}" for n in changed))
    stale = sorted(set(judged) & set(names) - set(survived))
    if stale:
        print("\nListed as equivalent but no longer surviving (remove from the list):")
        print("\n".join(f"  {n}" for n in stale))
    print("\nper module: killed / non-equivalent run (kill rate)")
    for module in sorted({module_of(n) for n in names}):
        mine = [n for n in names if module_of(n) == module and n not in equivalent]
        hit = sum(n in killed for n in mine)
        print(f"  {module:<40} {hit:5} / {len(mine):<5} ({100.0 * hit / max(len(mine), 1):5.1f}%)")
    print(f"\nmutants generated {len(mutants.status)}; left out {skipped[0]} message-only and "
          f"{skipped[1]} outside the ledger's verify; run {len(names)} in {seconds / 60:.1f} min")
    print(f"killed {len(killed)}, survived {len(survived)} ({len(equivalent)} judged equivalent)")
    print(f"KILL RATE {rate:.1f}% of {counted} non-equivalent mutants (target {TARGET:.0f}%)")
    return 0 if rate >= TARGET else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", "--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--budget", type=float, default=10.0,
                        help="at most this many seconds of tests per mutant")
    parser.add_argument("--keep", action="store_true",
                        help="reuse mutants/ and the test measurements from the last run")
    parser.add_argument("--resume", action="store_true",
                        help="with --keep: run only the selected mutants that have no result yet")
    parser.add_argument("--only", default="",
                        help="glob(s) of mutant names to run, comma-separated (development)")
    parser.add_argument("--sample", type=int, default=1, help="run every N-th mutant only")
    parser.add_argument("--survivors", action="store_true",
                        help="with --keep: run again only the selected mutants that survived "
                             "(after writing tests for them)")
    parser.add_argument("--recheck-equivalent", action="store_true",
                        help="run the survivors judged equivalent too (to find stale entries)")
    parser.add_argument("--report-only", action="store_true",
                        help="no run: report the results already in mutants/ (implies --keep)")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    if not (args.keep or args.report_only):
        shutil.rmtree("mutants", ignore_errors=True)
    started = time.monotonic()
    if not args.report_only:
        generate()
        print(f"generated the mutants in {time.monotonic() - started:.0f} s")
    mutants = Mutants(ROOT / "mutants")
    names, messages, outside = mutants.selected()
    if args.only:
        globs = [g.strip() for g in args.only.split(",") if g.strip()]
        names = [n for n in names if any(fnmatch.fnmatch(n, g) for g in globs)]
    if args.sample > 1:  # a quick estimate: every N-th mutant, always the same ones
        names = names[::args.sample]
    judged = set() if args.recheck_equivalent else judged_equivalent(mutants)[0]
    if args.report_only:
        unrun = [n for n in names if mutants.status[n] is None and n not in judged]
        print(f"{len(unrun)} of the {len(names)} selected mutants have no result yet (left out)")
        names = [n for n in names if mutants.status[n] is not None or n in judged]
    else:
        if args.resume:
            names = [n for n in names if mutants.status[n] is None]
        if args.survivors:
            names = [n for n in names if mutants.status[n] is not None
                     and status_name(mutants.status[n]) not in KILLED]
        todo = [n for n in names if n not in judged]
        print(f"running {len(todo)} of {len(mutants.status)} mutants ({len(names) - len(todo)} "
              "judged equivalent are not run: --recheck-equivalent runs them)")
        run(todo, workers=args.workers, budget=args.budget)
        mutants = Mutants(ROOT / "mutants")
    return report(mutants, names, (messages, outside), time.monotonic() - started)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
