"""Coverage gate of `make test`: line AND branch coverage per package, from coverage's JSON report.

    python scripts/coverage_gate.py coverage.json

Fails (exit 1) with one line per package that is below its floor, naming the measure, the
figure and the least covered files, so the layer where the rules meet (service, adapters, web)
is held as well as the pure core. `FLOORS` says where each package stands against `TARGET`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

# (lines, branches) floors per package. The target is 90% on each measure (95% for core); each
# floor is a ratchet just under the figure the full suite measured, so coverage can only go up:
# raise a floor whenever tests raise the figure, never lower it.
TARGET = {"core": 95.0, "service": 90.0, "adapters": 90.0, "web": 90.0}
FLOORS = {  # core: measured on the full suite (make test's command), December 2026
    "core": (98.0, 97.0),  # measured 99.3 / 98.0
    # service, adapters, web: measured on the full suite (a clean-clone CI run), December 2026
    "service": (97.0, 93.0),  # measured 97.9 / 93.9
    # adapters: the MCP door now runs in-process under coverage (test_mcp_door_inprocess_server)
    "adapters": (96.0, 92.0),  # measured 97.0 / 93.2
    "web": (97.0, 95.0),  # measured 98.3 / 96.7
}


@dataclass
class Tally:
    lines: int = 0
    lines_hit: int = 0
    branches: int = 0
    branches_hit: int = 0
    files: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, summary: dict[str, int]) -> None:
        self.lines += summary["num_statements"]
        self.lines_hit += summary["covered_lines"]
        self.branches += summary.get("num_branches", 0)
        self.branches_hit += summary.get("covered_branches", 0)
        total = summary["num_statements"] + summary.get("num_branches", 0)
        hit = summary["covered_lines"] + summary.get("covered_branches", 0)
        self.files[name] = 100.0 * hit / total if total else 100.0

    @property
    def line_rate(self) -> float:
        return 100.0 * self.lines_hit / self.lines if self.lines else 100.0

    @property
    def branch_rate(self) -> float:
        return 100.0 * self.branches_hit / self.branches if self.branches else 100.0


def package_of(path: str) -> str | None:
    """`core` for `.../stepguard/core/decide.py`; None outside the gated packages."""
    parts = Path(path).parts
    if "stepguard" not in parts:
        return None
    rest = parts[len(parts) - parts[::-1].index("stepguard"):]
    return rest[0] if len(rest) > 1 and rest[0] in FLOORS else None


def tally(report: dict[str, object]) -> dict[str, Tally]:
    tallies = {name: Tally() for name in FLOORS}
    files = report["files"]
    assert isinstance(files, dict)
    for path, data in files.items():
        package = package_of(path)
        if package is not None:
            tallies[package].add(Path(path).name, data["summary"])
    return tallies


def problems(tallies: dict[str, Tally]) -> list[str]:
    found = []
    for name, floors in FLOORS.items():
        t = tallies[name]
        if t.lines == 0:
            found.append(f"{name}: no measured lines (was the package imported under coverage?)")
            continue
        weakest = ", ".join(f"{f} {p:.0f}%" for f, p in sorted(t.files.items(),
                                                               key=lambda i: i[1])[:3])
        for measure, rate, floor in (("lines", t.line_rate, floors[0]),
                                     ("branches", t.branch_rate, floors[1])):
            if rate < floor:
                found.append(f"{name}: {measure} {rate:.1f}% < {floor:.0f}% "
                             f"(least covered: {weakest})")
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    report = json.loads(Path(argv[1]).read_text())
    tallies = tally(report)
    for name, t in tallies.items():
        lines, branches = FLOORS[name]
        print(f"coverage {name:<9} lines {t.line_rate:5.1f}% (floor {lines:.0f}%)  "
              f"branches {t.branch_rate:5.1f}% (floor {branches:.0f}%)  target {TARGET[name]:.0f}%")
    found = problems(tallies)
    for line in found:
        print(f"COVERAGE GATE FAILED - {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
