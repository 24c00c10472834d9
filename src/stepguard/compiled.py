"""Compiled twins of modules: the same source built with mypyc (`scripts/accelerate.py`).

Modules are compiled in groups (calls between members of a group are native); each member's twin
is `pkg._name_compiled`, built from a copy whose imports of other members point at their twins.
A twin records what it was built from (`COMPILED_WITH`: the group's modules, `COMPILED_FROM`:
the SHA-256 of their sources) and is used only while those sources are unchanged, so an edited
module never runs as an older build of itself; `STEPGUARD_PURE=1` always takes the source.
Without a twin the module itself serves: same answers, more CPU.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

log = logging.getLogger("stepguard.compiled")


def twin_name(module: str) -> str:
    """Where the compiled twin of `module` lives: `pkg._name_compiled`."""
    package, _, name = module.rpartition(".")
    return f"{package}._{name}_compiled"


def sources_digest(paths: Iterable[str | Path]) -> str:
    """One digest of the sources of a group's modules, in order."""
    whole = hashlib.sha256()
    for path in paths:
        whole.update(hashlib.sha256(Path(path).read_bytes()).digest())
    return whole.hexdigest()


def source_of(module: str) -> str | None:
    spec = importlib.util.find_spec(module)
    return spec.origin if spec is not None and spec.origin and spec.origin.endswith(".py") \
        else None


def twin(module: ModuleType) -> ModuleType:
    """The compiled twin of `module` when present and built from the current sources of its
    group; else `module` itself."""
    if os.environ.get("STEPGUARD_PURE") == "1":
        return module
    try:
        compiled = importlib.import_module(twin_name(module.__name__))
    except ImportError:
        return module
    group = getattr(compiled, "COMPILED_WITH", ())
    sources = [source_of(name) for name in group]
    if (module.__name__ not in group or None in sources
            or getattr(compiled, "COMPILED_FROM", None) != sources_digest(
                path for path in sources if path is not None)):
        log.warning("%s was compiled from other sources than the current ones: using %s as "
                    "Python (run scripts/accelerate.py again)", compiled.__name__,
                    module.__name__)
        return module
    return compiled
