"""The policy: named networks, declared attributes, ordered rules and a default, compiled once.

`compile_policy(document, source=...)` takes the parsed YAML document (plain mappings and lists),
checks every part, and either returns a `Policy` or raises `PolicyError` listing every problem
with its path (and line/column when a `locate` function is given). No partial policy exists.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stepguard.core.context import RequestContext, Subject
from stepguard.core.decision import Requirement
from stepguard.core.display import AttributeDisplay, parse_display
from stepguard.core.durations import parse_duration
from stepguard.core.errors import ExpressionError, PolicyError, Problem
from stepguard.core.expression import CompiledExpression, compile_expression
from stepguard.core.levels import FACTORS, Level, LevelSettings, default_level_settings
from stepguard.core.matching import (
    Index,
    check_host_pattern,
    host_matcher,
    literal_first_segments,
    path_matcher,
)
from stepguard.core.reason import REASON_NAMES, check_template
from stepguard.core.statement import KINDS, MATCH_KEYS, statement_matcher

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Path = tuple[str | int, ...]
Locate = Callable[[Path], tuple[int, int] | None]
Check = Callable[[RequestContext, Subject | None], bool]

ATTRIBUTE_TYPES = ("number", "string", "bool", "list")
_TOP = frozenset(
    {"version", "mode", "levels", "networks", "attributes", "rules", "default", "tests"})
_RULE = frozenset({"name", "description", "mode", "match", "when", "require", "deny", "allow"})
MODES = ("enforce", "report")
_MATCH = frozenset({"hosts", "methods", "paths", "users", "groups", "actions", "networks", "mcp",
                    "postgres"})
_HTTP_MATCH = frozenset({"hosts", "methods", "paths", "actions"})  # flat keys: the HTTP door's
_MCP_MATCH = frozenset({"servers", "tools"})
# An MCP tool's arguments are attributes named `args.<name>` (nested objects: `args.a.b`).
_ARG_NAME = re.compile(r"args(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})?")  # a reason's language (BCP 47)
_REQUIRE = frozenset({"level", "max_age", "methods", "scope", "single_use", "bind", "reason",
                      "via"})
VIA = ("local", "idp")  # step up with Stepguard's own factors, or at the identity provider
_LEVEL = frozenset({"acr", "max_session", "idle"})


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule: static checks, an optional condition, and require / deny / allow."""

    name: str
    position: int
    checks: tuple[tuple[Check, str], ...]
    when: CompiledExpression | None
    requirement: Requirement | None
    deny: str | None = None
    description: str = ""
    index_hosts: frozenset[str] | None = None  # None = any host (for the index)
    index_segments: frozenset[str] | None = None  # None = any first path segment
    door: str = ""  # "" = every door; "http" (flat HTTP match keys), "mcp", "postgres"
    report: bool = False  # `mode: report`: decided and audited as "would …", never enforced

    @property
    def uses_risk(self) -> bool:
        return self.when is not None and any(n.startswith("risk") for n in self.when.names)


@dataclass(frozen=True, slots=True)
class Policy:
    """A compiled policy; immutable and safe to share between threads."""

    rules: tuple[Rule, ...]
    default: Rule
    networks: Mapping[str, tuple[Network, ...]]
    attributes: Mapping[str, str]
    levels: Mapping[Level, LevelSettings]
    index: Index[Rule] = field(repr=False)
    source: str = ""
    door_rules: Mapping[str, tuple[Rule, ...]] = field(default_factory=dict, repr=False)
    display: Mapping[str, AttributeDisplay] = field(default_factory=dict)
    report: bool = False  # `mode: report` for the whole policy: every request passes
    enforced: Policy | None = field(default=None, repr=False)  # without report-mode rules

    @property
    def has_report_rules(self) -> bool:
        return self.enforced is not None

    def candidates(self, context: RequestContext) -> tuple[Rule, ...]:
        if context.door == "http":
            return self.index.candidates(context.host, context.path)
        return self.door_rules.get(context.door, ())

    def rule(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)


class _Problems:
    """Collects problems with their path and, when known, line and column."""

    def __init__(self, source: str, locate: Locate | None) -> None:
        self.source, self.locate, self.items = source, locate, list[Problem]()

    def add(self, path: Path, message: str, offset: tuple[int, int] | None = None) -> None:
        where = self.locate(path) if self.locate else None
        line, column = where if where else (None, None)
        if offset and line is not None and column is not None:
            line, column = (
                line + offset[0] - 1,
                (column + offset[1] if offset[0] == 1 else offset[1]),
            )
        self.items.append(Problem(self.source, _render_path(path), message, line, column))


def _render_path(path: Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def compile_policy(document: Any, *, source: str = "", locate: Locate | None = None) -> Policy:
    """Compile a parsed policy document; raise PolicyError with every problem found."""
    problems = _Problems(source, locate)
    if not isinstance(document, Mapping):
        problems.add((), "expected a mapping with 'rules' (and optionally 'networks', 'default')")
        raise PolicyError(problems.items)
    _unknown_keys(document, _TOP, (), problems)
    levels = _levels(document.get("levels"), problems)
    networks = _networks(document.get("networks"), problems)
    display: dict[str, AttributeDisplay] = {}
    attributes = _attributes(document.get("attributes"), problems, display)
    env = _Env(networks, attributes, problems)
    rules = _rules(document.get("rules"), env)
    default = _default(document.get("default", {"level": "aal1"}), env)
    report = _mode(document.get("mode", "enforce"), ("mode",), problems)
    if problems.items:
        raise PolicyError(problems.items)
    enforced = None
    if any(r.report for r in rules) and not report:
        kept = [r for r in rules if not r.report]
        enforced = _policy(kept, default, networks, attributes, levels, source, display=display)
    return _policy(rules, default, networks, attributes, levels, source, report, enforced,
                   display)


def _policy(rules: Sequence[Rule], default: Rule, networks: Mapping[str, tuple[Network, ...]],
            attributes: Mapping[str, str], levels: Mapping[Level, LevelSettings], source: str,
            report: bool = False, enforced: Policy | None = None,
            display: Mapping[str, AttributeDisplay] | None = None) -> Policy:
    entries = [(r, r.index_hosts, r.index_segments) for r in rules if r.door in ("", "http")]
    doors = {door: tuple(r for r in rules if r.door in ("", door)) for door in ("mcp", "postgres")}
    return Policy(tuple(rules), default, networks, attributes, levels, Index(entries), source,
                  doors, display or {}, report, enforced)


def _mode(value: Any, path: Path, problems: _Problems) -> bool:
    """True for `report` (decide and audit, never enforce), False for `enforce`."""
    if value not in MODES:
        problems.add(path, f"expected one of {', '.join(MODES)}, got {value!r}")
        return False
    return bool(value == "report")


@dataclass(slots=True)
class _Env:
    networks: dict[str, tuple[Network, ...]]
    attributes: dict[str, str]
    problems: _Problems


def _unknown_keys(
    data: Mapping[str, Any], allowed: frozenset[str], path: Path, problems: _Problems
) -> None:
    for key in data:
        if key not in allowed:
            expected = ", ".join(sorted(allowed))
            problems.add((*path, str(key)), f"unknown field {key!r} (expected one of: {expected})")


def _levels(data: Any, problems: _Problems) -> dict[Level, LevelSettings]:
    levels = default_level_settings()
    if data is None:
        return levels
    if not isinstance(data, Mapping):
        problems.add(("levels",), "expected a mapping of aal1/aal2/aal3 to settings")
        return levels
    for name, spec in data.items():
        path: Path = ("levels", str(name))
        try:
            level = Level.parse(str(name))
        except ValueError as exc:
            problems.add(path, str(exc))
            continue
        levels[level] = _level_settings(spec, levels[level], path, problems)
    return levels


def _level_settings(
    spec: Any, base: LevelSettings, path: Path, problems: _Problems
) -> LevelSettings:
    if not isinstance(spec, Mapping):
        problems.add(path, "expected a mapping with acr, max_session and idle")
        return base
    _unknown_keys(spec, _LEVEL, path, problems)
    acr, max_session, idle = base.acr, base.max_session, base.idle
    if "acr" in spec:
        acr = str(spec["acr"])
    for key in ("max_session", "idle"):
        if key in spec:
            try:
                value = parse_duration(spec[key])
            except ValueError as exc:
                problems.add((*path, key), str(exc))
                continue
            max_session, idle = (value, idle) if key == "max_session" else (max_session, value)
    return LevelSettings(acr, max_session, idle)


def _networks(data: Any, problems: _Problems) -> dict[str, tuple[Network, ...]]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        problems.add(("networks",), "expected a mapping of names to lists of CIDR blocks")
        return {}
    networks: dict[str, tuple[Network, ...]] = {}
    for name, cidrs in data.items():
        path: Path = ("networks", str(name))
        if not str(name).isidentifier():
            problems.add(
                path, f"expected a network name made of letters, digits and _, got {name!r}"
            )
        items = cidrs if isinstance(cidrs, list) else [cidrs]
        parsed = [_cidr(c, (*path, i), problems) for i, c in enumerate(items)]
        networks[str(name)] = tuple(n for n in parsed if n is not None)
    return networks


def _cidr(value: Any, path: Path, problems: _Problems) -> Network | None:
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        problems.add(
            path, f"expected a CIDR block such as 10.0.0.0/8 or 2001:db8::/32, got {value!r}"
        )
        return None


def _attributes(data: Any, problems: _Problems,
                display: dict[str, AttributeDisplay]) -> dict[str, str]:
    """`name: type`, or `name: {type, label, currency}` (how the portal shows it)."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        problems.add(("attributes",), "expected a mapping of attribute names to types")
        return {}
    attributes: dict[str, str] = {}
    for name, kind in data.items():
        if isinstance(kind, Mapping):
            shown, wrong = parse_display(kind)
            for text in wrong:
                problems.add(("attributes", str(name)), text)
            if shown is not None:
                display[str(name)] = shown
            kind = kind.get("type")
        if not str(name).isidentifier() and not _ARG_NAME.fullmatch(str(name)):
            problems.add(("attributes", str(name)),
                         f"expected an identifier (or args.<name> for a tool argument), "
                         f"got {name!r}")
        elif kind not in ATTRIBUTE_TYPES:
            problems.add(
                ("attributes", str(name)),
                f"expected one of {', '.join(ATTRIBUTE_TYPES)}, got {kind!r}",
            )
        else:
            attributes[str(name)] = str(kind)
    return attributes


def _rules(data: Any, env: _Env) -> list[Rule]:
    if data is None:
        return []
    if not isinstance(data, list):
        env.problems.add(("rules",), "expected a list of rules")
        return []
    rules, seen = [], set[str]()
    for i, spec in enumerate(data):
        rule = _rule(spec, i, env)
        if rule is None:
            continue
        if rule.name == "default":  # the fallback's name: decisions and the audit know rules by it
            env.problems.add(("rules", i, "name"), "the rule name 'default' is reserved for the "
                             "policy's `default:`; choose another name")
        elif rule.name in seen:
            env.problems.add(("rules", i, "name"), f"duplicate rule name {rule.name!r}")
        seen.add(rule.name)
        rules.append(rule)
    return rules


def _rule(spec: Any, i: int, env: _Env) -> Rule | None:
    path: Path = ("rules", i)
    if not isinstance(spec, Mapping):
        env.problems.add(path, "expected a rule (a mapping with name, match, when, require/deny)")
        return None
    _unknown_keys(spec, _RULE, path, env.problems)
    name = spec.get("name")
    if not isinstance(name, str) or not name.strip():
        env.problems.add((*path, "name"), "expected a non-empty rule name")
        name = f"rule-{i}"
    outcomes = [k for k in ("require", "deny", "allow") if k in spec]
    if len(outcomes) != 1:
        env.problems.add(path, "expected exactly one of 'require', 'deny' or 'allow: true'")
    checks = _match(spec.get("match"), (*path, "match"), env)
    when = _when(spec.get("when"), (*path, "when"), env)
    requirement, deny = _outcome(spec, path, name, env)
    raw_match = spec.get("match")
    match: Mapping[str, Any] = raw_match if isinstance(raw_match, Mapping) else {}
    return Rule(
        name,
        i,
        checks,
        when,
        requirement,
        deny,
        str(spec.get("description", "")),
        _index_hosts(match.get("hosts")),
        _index_segments(match.get("paths")),
        _door(match, (*path, "match"), env.problems),
        _mode(spec.get("mode", "enforce"), (*path, "mode"), env.problems),
    )


def _door(match: Mapping[str, Any], path: Path, problems: _Problems) -> str:
    http = sorted(k for k in match if k in _HTTP_MATCH)
    doors = [d for d in ("mcp", "postgres") if d in match]
    if doors and http or len(doors) > 1:
        problems.add(path, f"a rule matches one door: {', '.join(doors)} cannot be combined "
                           f"with {', '.join(http + doors[1:]) or doors[0]}")
    return doors[0] if doors else ("http" if http else "")


def _outcome(
    spec: Mapping[str, Any], path: Path, name: str, env: _Env
) -> tuple[Requirement | None, str | None]:
    if "deny" in spec:
        deny = spec["deny"]
        if not isinstance(deny, str) or not deny.strip():
            env.problems.add((*path, "deny"), "expected the reason shown to the user, as text")
            return None, "This request is not allowed."
        _template((*path, "deny"), deny, env)
        return None, deny
    if "allow" in spec:
        if spec["allow"] is not True:
            env.problems.add((*path, "allow"), "expected 'allow: true' (public, no sign-in)")
        return None, None
    return _requirement(spec.get("require"), (*path, "require"), name, env), None


def _requirement(spec: Any, path: Path, name: str, env: _Env) -> Requirement:
    if not isinstance(spec, Mapping):
        env.problems.add(path, "expected a mapping with at least 'level' (aal1, aal2 or aal3)")
        return Requirement()
    _unknown_keys(spec, _REQUIRE, path, env.problems)
    level = _level_of(spec.get("level", "aal1"), (*path, "level"), env.problems)
    max_age = _optional_duration(spec.get("max_age"), (*path, "max_age"), env.problems)
    methods = _methods(spec.get("methods", []), (*path, "methods"), env.problems)
    bind = _names(spec.get("bind", []), (*path, "bind"), env)
    reason, reason_texts = _reason_spec(spec.get("reason", ""), (*path, "reason"), env)
    scope = spec.get("scope")
    single_use = spec.get("single_use", False)
    if not isinstance(single_use, bool):
        env.problems.add((*path, "single_use"), "expected true or false")
        single_use = True
    if scope is not None and not isinstance(scope, str):
        env.problems.add((*path, "scope"), "expected a scope name")
        scope = name
    via = spec.get("via", "")
    if via != "" and via not in VIA:
        env.problems.add((*path, "via"), "expected local or idp")
        via = "local"
    return Requirement(level=level, max_age=max_age, methods=methods, scope=scope,
                       single_use=single_use, bind=tuple(bind), reason=reason,
                       reason_texts=reason_texts, via=via)


def _reason_spec(value: Any, path: Path, env: _Env) -> tuple[str, tuple[tuple[str, str], ...]]:
    """`reason`: one text, or a text per language ({en: ..., de: ...}); the default text is
    English's, else the first one given."""
    if isinstance(value, str):
        _template(path, value, env)
        return value, ()
    if not isinstance(value, Mapping) or not value:
        env.problems.add(path, "expected text, or a mapping of language to text "
                               "(e.g. {en: ..., de: ...})")
        return "", ()
    texts: list[tuple[str, str]] = []
    for language, text in value.items():
        if not isinstance(language, str) or not _LANGUAGE.fullmatch(language):
            env.problems.add((*path, str(language)),
                             "expected a language code such as en, de or pt-BR")
        elif not isinstance(text, str) or not text.strip():
            env.problems.add((*path, language), "expected text")
        else:
            _template((*path, language), text, env)
            texts.append((language.lower(), text))
    default = dict(texts).get("en", texts[0][1] if texts else "")
    return default, tuple(texts)


def _level_of(value: Any, path: Path, problems: _Problems) -> Level:
    try:
        level = Level.parse(str(value))
    except ValueError as exc:
        problems.add(path, str(exc))
        return Level.AAL3
    if level is Level.AAL0:
        problems.add(path, "expected aal1, aal2 or aal3 (use 'allow: true' for public routes)")
    return level


def _optional_duration(value: Any, path: Path, problems: _Problems) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        problems.add(path, str(exc))
        return 0.0


def _methods(value: Any, path: Path, problems: _Problems) -> frozenset[str]:
    items = value if isinstance(value, list) else [value]
    unknown = [m for m in items if m not in FACTORS]
    if unknown:
        problems.add(
            path,
            f"unknown method(s) {', '.join(map(repr, unknown))} "
            f"(expected some of: {', '.join(FACTORS)})",
        )
    return frozenset(str(m) for m in items if m in FACTORS)


def _names(value: Any, path: Path, env: _Env) -> list[str]:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if item not in env.attributes:
            declared = ", ".join(sorted(env.attributes)) or "none declared"
            env.problems.add(
                path,
                f"unknown attribute {item!r}: declare it under 'attributes' (declared: {declared})",
            )
    return [str(i) for i in items]


def _template(path: Path, text: str, env: _Env) -> None:
    known = [*REASON_NAMES, *env.attributes]
    for message in check_template(text, known=known):
        env.problems.add(path, message)


def _when(value: Any, path: Path, env: _Env) -> CompiledExpression | None:
    if value is None:
        return None
    if not isinstance(value, str):
        env.problems.add(path, 'expected an expression as text, e.g. "amount > 1000"')
        return None
    try:
        return compile_expression(value, attributes=env.attributes, networks=env.networks)
    except ExpressionError as exc:
        env.problems.add(path, exc.message, (exc.line, exc.column))
        return None


def _match(spec: Any, path: Path, env: _Env) -> tuple[tuple[Check, str], ...]:
    if spec is None:
        return ()
    if not isinstance(spec, Mapping):
        env.problems.add(
            path, "expected a mapping of hosts, methods, paths, users, groups, actions, networks"
        )
        return ()
    _unknown_keys(spec, _MATCH, path, env.problems)
    checks: list[tuple[Check, str]] = []
    if "postgres" in spec:
        checks.append(_postgres_check(spec["postgres"], (*path, "postgres"), env))
    for key in ("methods", "hosts", "paths", "actions", "networks", "users", "groups"):
        if key in spec:
            check = _match_check(key, _list(spec[key], (*path, key), env.problems), path, env)
            if check is not None:
                checks.append(check)
    if "mcp" in spec:
        checks.extend(_mcp_checks(spec["mcp"], (*path, "mcp"), env))
    return tuple(checks)


def _mcp_checks(spec: Any, path: Path, env: _Env) -> list[tuple[Check, str]]:
    """`mcp: {servers: [bank], tools: ["transfer*"]}`: an agent's tool call (`door` "mcp"),
    whose server name is the context's `host` and tool name its `action`."""
    if not isinstance(spec, Mapping):
        env.problems.add(path, "expected a mapping with 'servers' and/or 'tools'")
        return []
    _unknown_keys(spec, _MCP_MATCH, path, env.problems)
    checks: list[tuple[Check, str]] = []
    if "servers" in spec:
        servers = frozenset(_list(spec["servers"], (*path, "servers"), env.problems))
        checks.append((lambda ctx, _s: ctx.host in servers, f"mcp servers {sorted(servers)}"))
    if "tools" in spec:
        tools = _list(spec["tools"], (*path, "tools"), env.problems)
        if any("/" in t for t in tools):
            env.problems.add((*path, "tools"), "expected tool name globs without '/'")
        elif tools:
            matches = path_matcher(["/" + t for t in tools])
            checks.append((lambda ctx, _s: matches("/" + ctx.action), f"mcp tools {tools}"))
    return checks


def _list(value: Any, path: Path, problems: _Problems) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(i, str) and i for i in items):
        problems.add(path, "expected a non-empty list of text values")
        return []
    return [str(i) for i in items]


def _match_check(key: str, items: list[str], path: Path, env: _Env) -> tuple[Check, str] | None:
    if not items:
        return None
    label = f"{key} {items}"
    builder = _CHECKS[key]
    try:
        return builder(items, env), label
    except ValueError as exc:
        env.problems.add((*path, key), str(exc))
        return None


def _postgres_check(spec: Any, path: Path, env: _Env) -> tuple[Check, str]:
    """A `postgres:` block: databases, kinds, tables, columns (each a list; all given must hold)."""
    label = f"postgres {spec}"
    door: Check = lambda ctx, _s: ctx.door == "postgres"  # noqa: E731
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        env.problems.add(path, "expected a mapping of databases, kinds, tables, columns")
        return door, label
    _unknown_keys(spec, MATCH_KEYS, path, env.problems)
    lists = {key: _list(spec[key], (*path, key), env.problems) for key in MATCH_KEYS if key in spec}
    unknown = [k for k in lists.get("kinds", []) if k not in KINDS]
    if unknown:
        env.problems.add((*path, "kinds"), f"unknown kind(s) {unknown} (expected some of: "
                         f"{', '.join(KINDS)})")
    matches = statement_matcher(lists)
    return (lambda ctx, _s: ctx.door == "postgres" and matches(ctx.statement)), label


def _methods_check(items: list[str], _env: _Env) -> Check:
    methods = frozenset(m.upper() for m in items)
    return lambda ctx, _s: ctx.method in methods


def _hosts_check(items: list[str], _env: _Env) -> Check:
    for item in items:
        check_host_pattern(item)
    matches = host_matcher(items)
    return lambda ctx, _s: matches(ctx.host)


def _paths_check(items: list[str], _env: _Env) -> Check:
    matches = path_matcher(items)
    return lambda ctx, _s: matches(ctx.path)


def _actions_check(items: list[str], _env: _Env) -> Check:
    matches = path_matcher(["/" + a.replace(".", "/") for a in items])
    return lambda ctx, _s: bool(ctx.action) and matches("/" + ctx.action.replace(".", "/"))


def _networks_check(items: list[str], env: _Env) -> Check:
    unknown = [n for n in items if n not in env.networks]
    if unknown:
        raise ValueError(f"unknown network(s) {unknown} (defined: {sorted(env.networks)})")
    blocks = tuple(b for n in items for b in env.networks[n])
    return lambda ctx, _s: _in_networks(ctx.client_ip, blocks)


def _in_networks(ip: str, blocks: Sequence[Network]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in block for block in blocks)


def _users_check(items: list[str], _env: _Env) -> Check:
    users = frozenset(items)
    return lambda _c, s: s is not None and s.id in users


def _groups_check(items: list[str], _env: _Env) -> Check:
    groups = frozenset(items)
    return lambda _c, s: s is not None and not groups.isdisjoint(s.groups)


_CHECKS: dict[str, Callable[[list[str], _Env], Check]] = {
    "methods": _methods_check,
    "hosts": _hosts_check,
    "paths": _paths_check,
    "actions": _actions_check,
    "networks": _networks_check,
    "users": _users_check,
    "groups": _groups_check,
}


def _default(spec: Any, env: _Env) -> Rule:
    path: Path = ("default",)
    if spec == "allow" or (isinstance(spec, Mapping) and spec.get("allow") is True):
        return Rule("default", -1, (), None, None)
    if isinstance(spec, Mapping) and "deny" in spec:
        return Rule("default", -1, (), None, None, str(spec["deny"]))
    return Rule("default", -1, (), None, _requirement(spec, path, "default", env))


def _index_hosts(value: Any) -> frozenset[str] | None:
    hosts = _as_texts(value)
    if hosts is None or any(h.startswith("*.") for h in hosts):
        return None
    return frozenset(h.lower().rstrip(".") for h in hosts)


def _index_segments(value: Any) -> frozenset[str] | None:
    paths = _as_texts(value)
    if paths is None:
        return None
    segments = [literal_first_segments(p) for p in paths]
    if any(s is None for s in segments):
        return None
    return frozenset(s for s in segments if s is not None)


def _as_texts(value: Any) -> list[str] | None:
    if value is None:
        return None
    return [str(v) for v in (value if isinstance(value, list) else [value])]
