"""The core must never touch a clock, a database, the network or a web framework."""

from __future__ import annotations

import ast
from pathlib import Path

import stepguard.core

CORE = Path(stepguard.core.__file__).parent
FORBIDDEN_MODULES = {
    "time", "datetime", "socket", "ssl", "http", "urllib.request", "asyncio", "threading",
    "subprocess", "os", "sys", "io", "pathlib", "shutil", "sqlite3", "sqlalchemy", "psycopg",
    "redis", "httpx", "requests", "starlette", "fastapi", "uvicorn", "granian", "jinja2",
    "pydantic", "yaml", "structlog", "logging", "random", "secrets", "maxminddb",
    "stepguard.storage", "stepguard.service", "stepguard.adapters", "stepguard.web",
    "stepguard.config", "stepguard.cli", "stepguard.audit", "stepguard.factors",
}
FORBIDDEN_CALLS = {"open", "eval", "exec", "compile", "__import__", "input"}


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN_MODULES)


def test_core_imports_no_io_clock_or_framework() -> None:
    offenders = []
    for file in sorted(CORE.glob("*.py")):
        tree = ast.parse(file.read_text(), filename=str(file))
        offenders += [f"{file.name}: imports {m}" for m in _imports(tree) if _forbidden(m)]
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in FORBIDDEN_CALLS):
                offenders.append(f"{file.name}:{node.lineno}: calls {node.func.id}()")
    assert offenders == []


def test_the_check_itself_catches_an_offender(tmp_path: Path) -> None:
    tree = ast.parse("import time\nfrom sqlalchemy import select\nx = eval('1')\n")
    assert {m for m in _imports(tree) if _forbidden(m)} == {"time", "sqlalchemy"}
