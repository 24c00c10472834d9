"""Build the compiled twins of Stepguard's hot modules with mypyc (docs/deployment.md).

Each group in GROUPS is compiled together (calls between its members are native C calls): in a
scratch copy of the package, each member is copied to `_<name>_compiled.py` beside it, with its
imports of other members pointed at their twins and what it was built from appended
(`COMPILED_WITH`, `COMPILED_FROM`: see stepguard/compiled.py); the extension files are copied
beside the sources (src/stepguard/...). Without mypyc or a C compiler this says so and exits 0
(the modules run as Python), unless `--strict`.

The copies are type-checked by mypyc with two error codes off, `arg-type` and `assignment`: a
copy's classes are not the original's, and the modules outside the group name the originals
(gateway.py's `remember(connection: Connection)`, its `turn: Turn`); at run time the objects are
the twins' (the gateway takes the whole group's twins or none), and mypyc still checks each
value's class where the copy declares one. The sources themselves are checked by `make lint`
(mypy --strict).

Run: `python scripts/accelerate.py` (the Makefile runs it after installing; about a minute).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
sys.path.insert(0, str(SRC))
from stepguard.compiled import sources_digest, twin_name  # noqa: E402

# The database door's hot path: the round trip's shapes, the tracker of what the server holds,
# the loop turn's memory and the connection's code. The version board: a look at it is every
# cached decision's revocation check on SQLite (the store takes its twin).
GROUPS = {"stepguard.pgwire._door": ["stepguard.pgwire.roundtrip", "stepguard.pgwire.tracking",
                                     "stepguard.pgwire.turn", "stepguard.pgwire.session"],
          "stepguard.storage._board": ["stepguard.storage.version_board"]}

SETUP = """\
from setuptools import setup
from mypyc.build import mypycify

setup(name="stepguard-twins", script_args=["build_ext", "--inplace"],
      ext_modules=mypycify(["--disable-error-code", "arg-type",
                            "--disable-error-code", "assignment", "--follow-imports", "silent",
                            *{paths!r}],
                           group_name={group!r}))
"""


def _path(module: str) -> Path:
    return Path(*module.split(".")).with_suffix(".py")


def build(group: str, members: list[str], scratch: Path) -> list[Path]:
    """Compile one group's twins in `scratch`; the extension files it made."""
    shutil.copytree(SRC / "stepguard", scratch / "stepguard",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "_*_compiled.py"))
    digest = sources_digest(SRC / _path(module) for module in members)
    imports = re.compile(r"^(\s*from )(" + "|".join(re.escape(m) for m in members)
                         + r")( import )", re.MULTILINE)
    copies = []
    for module in members:
        text = imports.sub(lambda found: found[1] + twin_name(found[2]) + found[3],
                           (SRC / _path(module)).read_text())
        copy = scratch / _path(twin_name(module))
        copy.write_text(f"{text}\nCOMPILED_WITH = {tuple(members)!r}\n"
                        f'COMPILED_FROM = "{digest}"\n')
        copies.append(str(copy.relative_to(scratch)))
    (scratch / "setup_twins.py").write_text(SETUP.format(paths=copies, group=group))
    done = subprocess.run([sys.executable, "setup_twins.py"], cwd=scratch, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"mypyc failed for {group}:\n"
                           f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
    # the scratch package held no extension files before: every one there was built now
    return sorted((scratch / _path(group).parent).glob(
        f"*{sysconfig.get_config_var('EXT_SUFFIX')}"))


def compiler() -> bool:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    try:
        import mypyc  # noqa: F401
    except ImportError:
        return False
    return shutil.which(cc) is not None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strict", action="store_true", help="fail when a twin cannot be built")
    args = parser.parse_args()
    if not compiler():
        print("accelerate: mypyc or a C compiler is missing; the modules run as Python")
        return 1 if args.strict else 0
    failed = False
    for group, members in GROUPS.items():
        target = SRC / _path(group).parent
        for old in target.glob("_*_compiled*.so"):
            old.unlink()  # never leave a twin of other sources behind
        for old in target.glob(f"{_path(group).stem}__mypyc*.so"):
            old.unlink()
        with tempfile.TemporaryDirectory() as scratch:
            try:
                built = build(group, members, Path(scratch))
            except RuntimeError as exc:
                print(f"accelerate: {exc}")
                failed = True
                continue
            for path in built:
                shutil.copy2(path, target / path.name)
        print(f"accelerate: {group} compiled ({', '.join(p.name for p in built)})")
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
