"""The `when` language: parsed once, type-checked against known names, compiled to closures.

Grammar (lowest precedence first; comparisons do not chain)::

    expr       := and ('or' and)*
    and        := not ('and' not)*
    not        := 'not' not | comparison
    comparison := unary [('==' | '!=' | '<' | '<=' | '>' | '>=' | 'in' | 'not' 'in') unary]
    unary      := '-' unary | primary
    primary    := NUMBER | DURATION | STRING | 'true' | 'false' | 'null'
                | NAME ('.' NAME)* ['(' [expr (',' expr)*] ')']
                | '(' expr ')' | '[' [expr (',' expr)* [',']] ']'

Durations (`30s`, `5m`, `2h`, `1d`, `1h30m`, also `ms` and `w`) are numbers of seconds. The text is
never handed to `eval`; a hand-written tokenizer and recursive-descent parser build a small tree,
which is type-checked and turned into plain Python closures over an `EvalEnv`.

Runtime rules: a bare attribute reads `request.attributes[name]` and is coerced to its declared
type (numbers may arrive as strings such as "1200.50"; integers stay exact, decimals become
floats exactly as the literals in the condition do, so "0.1" equals 0.1; booleans may arrive as
"true"/"false"). A missing or uncoercible attribute raises
`EvaluationError`, and so does an equality test on a missing or malformed client IP; such an IP is
simply in no network. The caller treats a rule whose condition raised as matching (fail closed).
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import operator
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from stepguard.core.durations import parse_duration
from stepguard.core.errors import EvaluationError, ExpressionError
from stepguard.core.levels import Level

if TYPE_CHECKING:
    from stepguard.core.context import RequestContext, SessionState
    from stepguard.core.risk import RiskAssessment

__all__ = [
    "ATTRIBUTE_TYPES",
    "FUNCTIONS",
    "NAME_TYPES",
    "CompiledExpression",
    "EvalEnv",
    "compile_expression",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Fn = Callable[["EvalEnv"], Any]

# Types. `list` is a list of strings; list literals may also hold numbers or booleans.
STRING, NUMBER, BOOL, LIST, IP = "string", "number", "bool", "list", "ip"
NULL, NETWORK = "null", "network"
LIST_NUMBER, LIST_BOOL, LIST_EMPTY = "list<number>", "list<bool>", "list<empty>"
_LISTS: Final = {LIST: STRING, LIST_NUMBER: NUMBER, LIST_BOOL: BOOL, LIST_EMPTY: NULL}
_LIST_OF: Final = {STRING: LIST, NUMBER: LIST_NUMBER, BOOL: LIST_BOOL}
_WORDS: Final = {
    STRING: "a string",
    NUMBER: "a number",
    BOOL: "true or false",
    IP: "an IP address",
    NULL: "null",
    NETWORK: "a network",
    LIST: "a list",
    LIST_NUMBER: "a list",
    LIST_BOOL: "a list",
    LIST_EMPTY: "a list",
}

ATTRIBUTE_TYPES: Final = (NUMBER, STRING, BOOL, LIST)
"""Types a policy may declare for its bare request attributes."""

NAME_TYPES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "request.method": STRING,
        "request.host": STRING,
        "request.path": STRING,
        "request.scheme": STRING,
        "request.query": STRING,
        "request.user_agent": STRING,
        "request.device": STRING,
        "request.action": STRING,
        "request.ip": IP,
        "user.id": STRING,
        "user.name": STRING,
        "user.email": STRING,
        "user.groups": LIST,
        "session.level": STRING,
        "session.authenticated": BOOL,
        "session.age": NUMBER,
        "session.idle": NUMBER,
        "session.auth_age": NUMBER,
        "session.amr": LIST,
        "risk.score": NUMBER,
        "risk.level": STRING,
        "risk.signals": LIST,
        "risk.reasons": LIST,
        "network": IP,
        "ip": IP,
        "sql.database": STRING,
        "sql.kind": STRING,
        "sql.kinds": LIST,
        "sql.tables": LIST,
        "sql.columns": LIST,
        "sql.functions": LIST,
        "sql.unbounded": BOOL,
    }
)
"""Every built-in name and its type (string, number, bool, list of strings, ip)."""

FUNCTIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "lower": "lower(s): s in lower case",
        "upper": "upper(s): s in upper case",
        "len": "len(x): length of a string or list",
        "startswith": "startswith(s, prefix)",
        "endswith": "endswith(s, suffix)",
        "contains": "contains(s_or_list, x): substring or list membership",
        "glob": "glob(s, pattern): fnmatch-style * ? [abc] [!abc]; * also matches '/'",
        "has": "has(attribute): the request carries this attribute",
        "hour": "hour(): UTC hour (0-23) of the evaluation time",
    }
)
"""The whitelisted functions, with a one-line description each."""

_ARITY: Final = {
    "lower": 1,
    "upper": 1,
    "len": 1,
    "startswith": 2,
    "endswith": 2,
    "contains": 2,
    "glob": 2,
    "has": 1,
    "hour": 0,
}
_KEYWORDS: Final = frozenset({"and", "or", "not", "in", "true", "false", "null"})
_MAX_LENGTH: Final = 10_000
_MAX_DEPTH: Final = 48
_NO_TYPES: Final[Mapping[str, str]] = MappingProxyType({})
_NO_NETWORKS: Final[Mapping[str, Sequence[IPNetwork]]] = MappingProxyType({})


# --------------------------------------------------------------------------- runtime environment


class EvalEnv:
    """What a condition is evaluated against; the client IP is parsed lazily, once."""

    __slots__ = ("_address", "_address_parsed", "now", "request", "risk", "session")

    def __init__(
        self,
        *,
        request: RequestContext,
        session: SessionState | None,
        risk: RiskAssessment,
        now: float,
    ) -> None:
        self.request = request
        self.session = session
        self.risk = risk
        self.now = now
        self._address: IPAddress | None = None
        self._address_parsed = False

    @property
    def client_address(self) -> IPAddress | None:
        """The client IP (IPv4-mapped IPv6 unwrapped), or None when missing or malformed."""
        if not self._address_parsed:
            self._address = _parse_address(self.request.client_ip)
            self._address_parsed = True
        return self._address


def _parse_address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True, slots=True)
class CompiledExpression:
    """A type-checked condition. Call it (or `evaluate`) with an `EvalEnv` to get a bool.

    Evaluation raises `EvaluationError` when a value it needs is missing or malformed.
    """

    source: str
    names: frozenset[str]
    attributes: frozenset[str]
    networks: frozenset[str]
    evaluate: Callable[[EvalEnv], bool] = field(repr=False, compare=False)

    def __call__(self, env: EvalEnv) -> bool:
        return self.evaluate(env)


def compile_expression(
    text: str,
    *,
    attributes: Mapping[str, str] = _NO_TYPES,
    networks: Mapping[str, Sequence[IPNetwork]] = _NO_NETWORKS,
) -> CompiledExpression:
    """Parse, type-check and compile one `when` condition; raise `ExpressionError` if invalid.

    `attributes` declares the policy's bare names (name -> number|string|bool|list), read from
    `request.attributes`; `networks` names lists of networks for `network in office`.
    """
    if len(text) > _MAX_LENGTH:
        raise ExpressionError(f"expression is longer than {_MAX_LENGTH} characters", 1, 1)
    tree = _Parser(text, _tokenize(text)).parse()
    compiler = _Compiler(text, attributes, networks)
    evaluate = compiler.compile_condition(tree)
    return CompiledExpression(
        source=text,
        names=frozenset(compiler.names),
        attributes=frozenset(compiler.attributes),
        networks=frozenset(compiler.networks),
        evaluate=evaluate,
    )


# --------------------------------------------------------------------------- errors and positions


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _error(text: str, offset: int, message: str) -> ExpressionError:
    return ExpressionError(message, *_position(text, offset))


def _suggest(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# --------------------------------------------------------------------------- tokenizer


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "number" | "string" | "name" | "op" | "end"
    text: str
    value: Any
    start: int
    end: int


_SPACE = re.compile(r"[ \t\r\n]+")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_DURATION = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h|d|w))+")
_WORD_TAIL = re.compile(r"[A-Za-z0-9_.]*")
_OPERATORS = ("==", "!=", "<=", ">=", "<", ">", "(", ")", "[", "]", ",", ".", "-")
_MISTAKES = {
    "=": "'=' is not an operator (did you mean '=='?)",
    "!": "'!' is not an operator (use 'not', or '!=')",
    "&&": "'&&' is not an operator (use 'and')",
    "||": "'||' is not an operator (use 'or')",
    "&": "'&' is not an operator (use 'and')",
    "|": "'|' is not an operator (use 'or')",
}
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r"}


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while True:
        space = _SPACE.match(text, position)
        if space:
            position = space.end()
        if position >= len(text):
            tokens.append(_Token("end", "", None, position, position))
            return tokens
        token = _next_token(text, position)
        tokens.append(token)
        position = token.end


def _next_token(text: str, position: int) -> _Token:
    char = text[position]
    if "0" <= char <= "9":
        return _number_token(text, position)
    if char in "'\"":
        return _string_token(text, position)
    name = _NAME.match(text, position)
    if name:
        return _Token("name", name.group(), name.group(), position, name.end())
    for symbol in _OPERATORS:
        if text.startswith(symbol, position):
            return _Token("op", symbol, symbol, position, position + len(symbol))
    for mistake in sorted(_MISTAKES, key=len, reverse=True):
        if text.startswith(mistake, position):
            raise _error(text, position, _MISTAKES[mistake])
    raise _error(text, position, f"unexpected character {char!r}")


def _number_token(text: str, position: int) -> _Token:
    duration = _DURATION.match(text, position)
    if duration and not _continues_word(text, duration.end()):
        source = duration.group()
        return _Token(
            "number",
            source,
            _finite(text, position, parse_duration(source)),
            position,
            duration.end(),
        )
    number = _NUMBER.match(text, position)
    assert number is not None  # the caller saw a digit
    source = number.group()
    if _continues_word(text, number.end()):
        tail = _WORD_TAIL.match(text, number.end())
        bad = text[position : tail.end() if tail else number.end()]
        raise _error(
            text, position, f"invalid number {bad!r} (durations look like 30s, 5m, 2h or 1d)"
        )
    if text.startswith(".", number.end()):
        raise _error(
            text, position, f"invalid number {source + '.'!r} (expected digits after the '.')"
        )
    if len(source) > 40:
        raise _error(text, position, "number literal is too long (at most 40 characters)")
    value: int | float = float(source) if "." in source else int(source)
    return _Token("number", source, value, position, number.end())


def _continues_word(text: str, position: int) -> bool:
    return position < len(text) and (text[position].isalnum() or text[position] == "_")


def _finite(text: str, position: int, value: float) -> float:
    if not math.isfinite(value):
        raise _error(text, position, "number literal is too large")
    return value


def _string_token(text: str, position: int) -> _Token:
    quote, index, chars = text[position], position + 1, []
    while index < len(text) and text[index] not in (quote, "\n"):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            escaped = _ESCAPES.get(text[index + 1])
            if escaped is None:
                raise _error(
                    text,
                    index,
                    f"unknown escape '\\{text[index + 1]}' in a string (use \\\\ for a backslash)",
                )
            chars.append(escaped)
            index += 2
            continue
        chars.append(char)
        index += 1
    if index >= len(text) or text[index] != quote:
        raise _error(text, position, f"unterminated string (expected a closing {quote})")
    return _Token("string", text[position : index + 1], "".join(chars), position, index + 1)


# --------------------------------------------------------------------------- syntax tree


@dataclass(frozen=True, slots=True)
class _Literal:
    value: Any
    type: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Name:
    name: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _List:
    items: tuple[_Node, ...]
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Call:
    name: str
    args: tuple[_Node, ...]
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Unary:
    op: str  # "not" | "-"
    operand: _Node
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Logic:
    op: str  # "and" | "or"
    operands: tuple[_Node, ...]
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Compare:
    op: str  # == != < <= > >= in, "not in"
    left: _Node
    right: _Node
    op_start: int
    start: int
    end: int


_Node = _Literal | _Name | _List | _Call | _Unary | _Logic | _Compare
_COMPARISONS: Final = frozenset({"==", "!=", "<", "<=", ">", ">="})


# --------------------------------------------------------------------------- parser


class _Parser:
    """Recursive descent over the token list; every error names what was expected."""

    def __init__(self, text: str, tokens: list[_Token]) -> None:
        self._text = text
        self._tokens = tokens
        self._index = 0
        self._depth = 0

    def parse(self) -> _Node:
        node = self._or()
        token = self._peek()
        if token.kind != "end":
            raise self._fail(
                token,
                f"unexpected {_describe(token)} after a complete condition "
                "(expected 'and', 'or' or the end)",
            )
        return node

    # helpers
    def _peek(self, ahead: int = 0) -> _Token:
        return self._tokens[min(self._index + ahead, len(self._tokens) - 1)]

    def _advance(self) -> _Token:
        token = self._peek()
        self._index += 1
        return token

    def _at(self, text: str, ahead: int = 0) -> bool:
        token = self._peek(ahead)
        return token.kind in ("op", "name") and token.text == text

    def _expect(self, text: str, context: str) -> _Token:
        token = self._peek()
        if not self._at(text):
            raise self._fail(token, f"expected '{text}' {context}, got {_describe(token)}")
        return self._advance()

    def _fail(self, token: _Token, message: str) -> ExpressionError:
        return _error(self._text, token.start, message)

    @contextmanager
    def _nested(self) -> Iterator[None]:
        """Bound the recursion so deeply nested input fails with an ExpressionError."""
        self._depth += 1
        try:
            if self._depth > _MAX_DEPTH:
                raise self._fail(
                    self._peek(), f"condition is nested too deeply (more than {_MAX_DEPTH} levels)"
                )
            yield
        finally:
            self._depth -= 1

    # grammar
    def _or(self) -> _Node:
        return self._logic("or", self._and)

    def _and(self) -> _Node:
        return self._logic("and", self._not)

    def _logic(self, op: str, operand: Callable[[], _Node]) -> _Node:
        operands = [operand()]
        while self._at(op):
            self._advance()
            operands.append(operand())
        if len(operands) == 1:
            return operands[0]
        return _Logic(op, tuple(operands), operands[0].start, operands[-1].end)

    def _not(self) -> _Node:
        if not self._at("not"):
            return self._comparison()
        token = self._advance()
        with self._nested():
            operand = self._not()
        return _Unary("not", operand, token.start, operand.end)

    def _comparison(self) -> _Node:
        left = self._unary()
        op_token = self._peek()
        op = self._comparison_operator()
        if op is None:
            return left
        right = self._unary()
        second = self._peek()
        if self._comparison_operator() is not None:
            raise self._fail(second, "comparisons do not chain; combine them with 'and'")
        return _Compare(op, left, right, op_token.start, left.start, right.end)

    def _comparison_operator(self) -> str | None:
        token = self._peek()
        if token.kind == "op" and token.text in _COMPARISONS or self._at("in"):
            self._advance()
            return token.text
        if self._at("not") and self._at("in", 1):
            self._index += 2
            return "not in"
        return None

    def _unary(self) -> _Node:
        if not self._at("-"):
            return self._primary()
        token = self._advance()
        with self._nested():
            operand = self._unary()
        if isinstance(operand, _Literal) and operand.type == NUMBER:
            return _Literal(-operand.value, NUMBER, token.start, operand.end)
        return _Unary("-", operand, token.start, operand.end)

    def _primary(self) -> _Node:
        token = self._peek()
        if token.kind == "number":
            self._advance()
            return _Literal(token.value, NUMBER, token.start, token.end)
        if token.kind == "string":
            self._advance()
            return _Literal(token.value, STRING, token.start, token.end)
        if token.kind == "name":
            return self._name_or_call()
        if self._at("("):
            return self._parenthesised()
        if self._at("["):
            return self._list()
        raise self._fail(token, f"expected a value, got {_describe(token)}")

    def _name_or_call(self) -> _Node:
        token = self._advance()
        constants = {"true": (True, BOOL), "false": (False, BOOL), "null": (None, NULL)}
        if token.text in constants:
            value, kind = constants[token.text]
            return _Literal(value, kind, token.start, token.end)
        if token.text in _KEYWORDS:
            raise self._fail(token, f"expected a value, got '{token.text}'")
        parts, end = [token.text], token.end
        while self._at("."):
            self._advance()
            part = self._peek()
            if part.kind != "name" or part.text in _KEYWORDS:
                raise self._fail(part, f"expected a name after '.', got {_describe(part)}")
            parts.append(self._advance().text)
            end = part.end
        name = ".".join(parts)
        if self._at("("):
            return self._call(name, token.start)
        return _Name(name, token.start, end)

    def _call(self, name: str, start: int) -> _Node:
        args, end = self._sequence("(", ")", "to close the arguments")
        return _Call(name, args, start, end)

    def _parenthesised(self) -> _Node:
        opening = self._advance()
        with self._nested():
            inner = self._or()
        closing = self._peek()
        if not self._at(")"):
            line, column = _position(self._text, opening.start)
            raise self._fail(
                closing,
                f"expected ')' to close the '(' at {line}:{column}, got {_describe(closing)}",
            )
        self._advance()
        return inner

    def _list(self) -> _Node:
        start = self._peek().start
        items, end = self._sequence("[", "]", "to close the list", trailing_comma=True)
        return _List(items, start, end)

    def _sequence(
        self, opening: str, closing: str, context: str, trailing_comma: bool = False
    ) -> tuple[tuple[_Node, ...], int]:
        self._advance()  # the caller saw the opening bracket
        items: list[_Node] = []
        with self._nested():
            while not self._at(closing):
                items.append(self._or())
                if not self._at(","):
                    break
                self._advance()
                if self._at(closing) and not trailing_comma:
                    raise self._fail(self._peek(), f"expected a value, got '{closing}'")
        end = self._expect(closing, f"or ',' {context}" if items else context).end
        return tuple(items), end


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "the end of the condition"
    if token.kind == "string":
        return f"string {_shorten(token.text)}"
    if token.kind == "number":
        return f"number {token.text}"
    return f"'{_shorten(token.text)}'"


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- compiler


class _Constant:
    """Marker for 'not a compile-time constant'."""


_NOT_CONSTANT: Final = _Constant()


@dataclass(frozen=True, slots=True)
class _Typed:
    type: str
    fn: Fn
    constant: Any = _NOT_CONSTANT
    network_test: Callable[[IPAddress | None], bool] | None = None

    @property
    def is_constant(self) -> bool:
        return self.constant is not _NOT_CONSTANT


def _constant(value: Any, kind: str) -> _Typed:
    return _Typed(kind, lambda env: value, value)


_ORDERING: Final[Mapping[str, Callable[[Any, Any], bool]]] = MappingProxyType(
    {
        "<": operator.lt,
        "<=": operator.le,
        ">": operator.gt,
        ">=": operator.ge,
        "==": operator.eq,
        "!=": operator.ne,
    }
)


class _Compiler:
    """Type-checks the tree and builds closures; records the names it resolves."""

    def __init__(
        self, text: str, attributes: Mapping[str, str], networks: Mapping[str, Sequence[IPNetwork]]
    ) -> None:
        self._text = text
        self._attribute_types = attributes
        self._network_lists = networks
        self.names: set[str] = set()
        self.attributes: set[str] = set()
        self.networks: set[str] = set()

    def compile_condition(self, node: _Node) -> Callable[[EvalEnv], bool]:
        typed = self._value(node)
        if typed.type != BOOL:
            raise self._fail(
                node, f"expected a condition that is true or false, got {self._got(node, typed)}"
            )
        return typed.fn

    # helpers
    def _fail(self, node: _Node, message: str) -> ExpressionError:
        return _error(self._text, node.start, message)

    def _got(self, node: _Node, typed: _Typed) -> str:
        if typed.type == NULL:
            return "null"
        kind = "list" if typed.type in _LISTS else typed.type
        return f"{kind} {_shorten(self._text[node.start : node.end])}"

    def _expect(self, node: _Node, kinds: tuple[str, ...], where: str) -> _Typed:
        typed = self._value(node)
        if typed.type not in kinds:
            wanted = " or ".join(dict.fromkeys(_WORDS[k] for k in kinds))
            raise self._fail(node, f"expected {wanted} {where}, got {self._got(node, typed)}")
        return typed

    def _value(self, node: _Node) -> _Typed:
        """Compile a node that must be a value (a network name is only allowed after 'in')."""
        typed = self._compile(node)
        if typed.type == NETWORK:
            raise self._fail(
                node,
                f"network '{self._text[node.start : node.end]}' can only be used "
                "on the right of 'in'",
            )
        return typed

    def _compile(self, node: _Node) -> _Typed:
        if isinstance(node, _Literal):
            return _constant(node.value, node.type)
        if isinstance(node, _Name):
            return self._name(node)
        if isinstance(node, _List):
            return self._list(node)
        if isinstance(node, _Call):
            return self._call(node)
        if isinstance(node, _Unary):
            return self._not(node) if node.op == "not" else self._negate(node)
        if isinstance(node, _Logic):
            return self._logic(node)
        return self._comparison(node)

    # names
    def _name(self, node: _Name) -> _Typed:
        name = node.name
        if name in NAME_TYPES:
            self.names.add(name)
            return _Typed(NAME_TYPES[name], _SCHEMA_READERS[name])
        if name in self._network_lists and name in self._attribute_types:
            raise self._fail(node, f"'{name}' is both a network and an attribute; rename one")
        if name in self._network_lists:
            self.names.add(name)
            self.networks.add(name)
            test = _network_test(self._network_lists[name])
            return _Typed(NETWORK, _unusable, network_test=test)
        if name in self._attribute_types:
            return self._attribute(node)
        candidates = [*NAME_TYPES, *self._attribute_types, *self._network_lists, *_KEYWORDS]
        hint = _suggest(name, candidates)
        raise self._fail(node, f"unknown name '{_shorten(name)}'{hint}")

    def _attribute(self, node: _Name) -> _Typed:
        kind = self._attribute_types[node.name]
        if kind not in ATTRIBUTE_TYPES:
            raise self._fail(
                node,
                f"attribute '{node.name}' is declared with unknown type "
                f"{kind!r} (expected number, string, bool or list)",
            )
        self.names.add(node.name)
        self.attributes.add(node.name)
        return _Typed(kind, _attribute_reader(node.name, kind))

    # lists
    def _list(self, node: _List) -> _Typed:
        items = [self._value(item) for item in node.items]
        if not items:
            return _constant(frozenset(), LIST_EMPTY)
        kind = items[0].type
        for item_node, item in zip(node.items, items, strict=True):
            if item.type not in _LIST_OF:
                raise self._fail(
                    item_node,
                    "list items must be strings, numbers or true/false, "
                    f"got {self._got(item_node, item)}",
                )
            if item.type != kind:
                raise self._fail(
                    item_node,
                    f"list items must all have one type: expected "
                    f"{_WORDS[kind]}, got {self._got(item_node, item)}",
                )
        if all(item.is_constant for item in items):
            return _constant(frozenset(item.constant for item in items), _LIST_OF[kind])
        fns = tuple(item.fn for item in items)
        return _Typed(_LIST_OF[kind], lambda env: tuple(fn(env) for fn in fns))

    # logic
    def _not(self, node: _Unary) -> _Typed:
        operand = self._expect(node.operand, (BOOL,), "after 'not'")
        if operand.is_constant:
            return _constant(not operand.constant, BOOL)
        fn = operand.fn
        return _Typed(BOOL, lambda env: not fn(env))

    def _negate(self, node: _Unary) -> _Typed:
        fn = self._expect(node.operand, (NUMBER,), "after '-'").fn
        return _Typed(NUMBER, lambda env: -fn(env))

    def _logic(self, node: _Logic) -> _Typed:
        fns = []
        for index, operand in enumerate(node.operands):
            where = f"on the {'left' if index == 0 else 'right'} of '{node.op}'"
            fns.append(self._expect(operand, (BOOL,), where).fn)
        return _Typed(BOOL, _all(fns) if node.op == "and" else _any(fns))

    # comparisons
    def _comparison(self, node: _Compare) -> _Typed:
        if node.op in ("in", "not in"):
            test = self._membership(node)
            if node.op == "in":
                return _Typed(BOOL, test)
            return _Typed(BOOL, lambda env: not test(env))
        if node.op in ("==", "!="):
            return _Typed(BOOL, self._equality(node))
        return _Typed(BOOL, self._ordering(node))

    def _ordering(self, node: _Compare) -> Fn:
        left = self._expect(node.left, (NUMBER, STRING), f"on the left of '{node.op}'")
        right = self._expect(node.right, (left.type,), f"on the right of '{node.op}'")
        return _binary(_ORDERING[node.op], left, right)

    def _equality(self, node: _Compare) -> Fn:
        left, right = self._value(node.left), self._value(node.right)
        for side, typed in ((node.left, left), (node.right, right)):
            if typed.type in _LISTS:
                raise self._fail(
                    side, f"cannot compare lists with '{node.op}'; use 'in' or contains()"
                )
        if IP in (left.type, right.type):
            return self._ip_equality(node, left, right)
        if NULL not in (left.type, right.type) and left.type != right.type:
            raise self._fail(
                node.right,
                f"expected {_WORDS[left.type]} on the right of "
                f"'{node.op}', got {self._got(node.right, right)}",
            )
        return _binary(_ORDERING[node.op], left, right)

    def _ip_equality(self, node: _Compare, left: _Typed, right: _Typed) -> Fn:
        sides = [self._as_address(node.left, left), self._as_address(node.right, right)]
        return _binary(_ORDERING[node.op], *sides)

    def _as_address(self, node: _Node, typed: _Typed) -> _Typed:
        if typed.type == IP:
            fn = typed.fn
            return _Typed(IP, lambda env: _require_address(fn(env)))
        if typed.type == STRING and typed.is_constant:
            address = _parse_address(typed.constant)
            if address is None:
                raise self._fail(node, f"expected an IP address, got {_shorten(typed.constant)!r}")
            return _constant(address, IP)
        if typed.type == NULL:
            return typed
        raise self._fail(
            node,
            f"expected an IP address or a quoted IP address literal, got {self._got(node, typed)}",
        )

    def _membership(self, node: _Compare) -> Fn:
        right = self._compile(node.right)
        if right.network_test is not None:
            return self._in_network(node, right.network_test)
        left = self._value(node.left)
        if left.type == IP:
            return self._in_cidrs(node, left)
        if left.type in _LISTS:
            raise self._fail(
                node.left,
                f"expected a single value on the left of '{node.op}', "
                f"got {self._got(node.left, left)}",
            )
        if right.type == STRING:
            if left.type != STRING:
                raise self._fail(
                    node.left,
                    f"expected a string on the left of '{node.op}' (the "
                    f"right is a string), got {self._got(node.left, left)}",
                )
            return _binary(_contains_reversed, left, right)
        if right.type not in _LISTS:
            got = self._got(node.right, right)
            raise self._fail(
                node.right,
                "expected a list, a string or a network name on the "
                f"right of '{node.op}', got {got}",
            )
        element = _LISTS[right.type]
        if NULL not in (element, left.type) and left.type != element:
            raise self._fail(
                node.left,
                f"expected {_WORDS[element]} on the left of '{node.op}' "
                f"(the list holds {element}s), got "
                f"{self._got(node.left, left)}",
            )
        return _binary(_contains_reversed, left, right)

    def _in_network(self, node: _Compare, test: Callable[[IPAddress | None], bool]) -> Fn:
        where = f"(network, ip or request.ip) on the left of '{node.op}' a network name"
        fn = self._expect(node.left, (IP,), where).fn
        return lambda env: test(fn(env))

    def _in_cidrs(self, node: _Compare, left: _Typed) -> Fn:
        if not isinstance(node.right, _List) or not all(
            isinstance(item, _Literal) and item.type == STRING for item in node.right.items
        ):
            right = self._compile(node.right)
            raise self._fail(
                node.right,
                "expected a network name or a list of quoted CIDRs "
                f'(such as ["10.0.0.0/8"]) on the right of '
                f"'{node.op}', got {self._got(node.right, right)}",
            )
        networks = [self._cidr(item) for item in node.right.items if isinstance(item, _Literal)]
        test, fn = _network_test(networks), left.fn
        return lambda env: test(fn(env))

    def _cidr(self, item: _Literal) -> IPNetwork:
        try:
            return ipaddress.ip_network(item.value)
        except ValueError as exc:
            raise self._fail(
                item,
                f"expected a network such as '10.0.0.0/8' or '2001:db8::/32', "
                f"got {_shorten(str(item.value))!r} ({exc})",
            ) from None

    # functions
    def _call(self, node: _Call) -> _Typed:
        if node.name not in _ARITY:
            hint = _suggest(node.name, list(_ARITY))
            if node.name in NAME_TYPES or node.name in self._attribute_types:
                raise self._fail(node, f"'{node.name}' is a name, not a function")
            raise self._fail(node, f"unknown function '{node.name}'{hint}")
        arity = _ARITY[node.name]
        if len(node.args) != arity:
            plural = "" if arity == 1 else "s"
            raise self._fail(
                node, f"{node.name}() takes {arity} argument{plural}, got {len(node.args)}"
            )
        builder: Callable[[_Compiler, _Call], _Typed] = _FUNCTION_BUILDERS[node.name]
        return builder(self, node)

    def _arg(self, node: _Call, index: int, kinds: tuple[str, ...]) -> _Typed:
        where = f"as argument {index + 1} of {node.name}()"
        return self._expect(node.args[index], kinds, where)

    def _string_function(self, node: _Call) -> _Typed:
        fn = self._arg(node, 0, (STRING,)).fn
        method = str.lower if node.name == "lower" else str.upper
        return _Typed(STRING, lambda env: method(fn(env)))

    def _len(self, node: _Call) -> _Typed:
        fn = self._arg(node, 0, (STRING, *_LISTS)).fn
        return _Typed(NUMBER, lambda env: len(fn(env)))

    def _affix(self, node: _Call) -> _Typed:
        text = self._arg(node, 0, (STRING,))
        affix = self._arg(node, 1, (STRING,))
        method = str.startswith if node.name == "startswith" else str.endswith
        return _Typed(BOOL, _binary(method, text, affix))

    def _contains(self, node: _Call) -> _Typed:
        container = self._arg(node, 0, (STRING, *_LISTS))
        element = STRING if container.type == STRING else _LISTS[container.type]
        kinds: tuple[str, ...] = (STRING,) if element == STRING else (element, NULL)
        if element == NULL:
            kinds = (STRING, NUMBER, BOOL, NULL)
        item = self._arg(node, 1, kinds)
        return _Typed(BOOL, _binary(operator.contains, container, item))

    def _glob(self, node: _Call) -> _Typed:
        text = self._arg(node, 0, (STRING,)).fn
        pattern = self._arg(node, 1, (STRING,))
        if pattern.is_constant:
            matcher = _compile_glob(pattern.constant)
            return _Typed(BOOL, lambda env: matcher(text(env)))
        pattern_fn = pattern.fn
        return _Typed(BOOL, lambda env: _compile_glob(pattern_fn(env))(text(env)))

    def _has(self, node: _Call) -> _Typed:
        arg = node.args[0]
        if not isinstance(arg, _Name) or arg.name not in self._attribute_types:
            got = _shorten(self._text[arg.start : arg.end])
            hint = _suggest(got, list(self._attribute_types)) if isinstance(arg, _Name) else ""
            raise self._fail(
                arg, f"expected a declared attribute name as argument 1 of has(), got {got}{hint}"
            )
        name = arg.name
        self.names.add(name)
        self.attributes.add(name)
        return _Typed(BOOL, lambda env: env.request.attributes.get(name) is not None)

    def _hour(self, node: _Call) -> _Typed:
        return _Typed(NUMBER, _utc_hour)


_FUNCTION_BUILDERS: Final[Mapping[str, Callable[[_Compiler, _Call], _Typed]]] = MappingProxyType(
    {
        "lower": _Compiler._string_function,
        "upper": _Compiler._string_function,
        "len": _Compiler._len,
        "startswith": _Compiler._affix,
        "endswith": _Compiler._affix,
        "contains": _Compiler._contains,
        "glob": _Compiler._glob,
        "has": _Compiler._has,
        "hour": _Compiler._hour,
    }
)


# --------------------------------------------------------------------------- closure helpers


def _binary(op: Callable[[Any, Any], Any], left: _Typed, right: _Typed) -> Fn:
    """`op(left, right)`, specialised for constant sides (constant-folded when both are)."""
    lf, rf = left.fn, right.fn
    if left.is_constant and right.is_constant:
        value = op(left.constant, right.constant)
        return lambda env: value
    if right.is_constant:
        constant = right.constant
        return lambda env: op(lf(env), constant)
    if left.is_constant:
        constant = left.constant
        return lambda env: op(constant, rf(env))
    return lambda env: op(lf(env), rf(env))


def _contains_reversed(item: Any, container: Any) -> bool:
    return item in container


def _all(fns: list[Fn]) -> Fn:
    if len(fns) == 2:
        first, second = fns
        return lambda env: first(env) and second(env)
    return lambda env: all(fn(env) for fn in fns)


def _any(fns: list[Fn]) -> Fn:
    if len(fns) == 2:
        first, second = fns
        return lambda env: first(env) or second(env)
    return lambda env: any(fn(env) for fn in fns)


def _unusable(env: EvalEnv) -> Any:  # pragma: no cover - the type checker forbids reaching it
    raise EvaluationError("a network name has no value of its own")


def _require_address(address: IPAddress | None) -> IPAddress:
    if address is None:
        raise EvaluationError("the client IP address is missing or malformed")
    return address


def _utc_hour(env: EvalEnv) -> int:
    if not math.isfinite(env.now):
        raise EvaluationError("the evaluation time is not a finite number")
    return int(env.now // 3600 % 24)


def _network_test(networks: Sequence[IPNetwork]) -> Callable[[IPAddress | None], bool]:
    """Membership over integer (network, mask) pairs, split by IP version."""
    v4 = tuple((int(n.network_address), int(n.netmask)) for n in networks if n.version == 4)
    v6 = tuple((int(n.network_address), int(n.netmask)) for n in networks if n.version == 6)
    ipv4 = ipaddress.IPv4Address

    def test(address: IPAddress | None) -> bool:
        if address is None:
            return False
        value = int(address)
        for net, mask in v4 if type(address) is ipv4 else v6:  # noqa: SIM110 - faster than any()
            if value & mask == net:
                return True
        return False

    return test


# --------------------------------------------------------------------------- glob


@lru_cache(maxsize=256)
def _compile_glob(pattern: str) -> Callable[[str], bool]:
    """fnmatch-style matcher without backtracking regexes (`*` also matches '/').

    The pattern is split at `*` into fixed-width pieces (`?`, `[...]`, literal characters); the
    first piece is anchored at the start, the last at the end, and the middle ones are found
    leftmost in order. The cost is linear-ish in the text, whatever the pattern.
    """
    pieces = [(re.compile("".join(part), re.DOTALL), len(part)) for part in _glob_pieces(pattern)]
    if len(pieces) == 1:
        only = pieces[0][0]
        return lambda text: only.fullmatch(text) is not None
    first, middle, (last, last_width) = pieces[0][0], pieces[1:-1], pieces[-1]

    def match(text: str) -> bool:
        found = first.match(text)
        if found is None:
            return False
        position = found.end()
        for piece, _ in middle:
            found = piece.search(text, position)
            if found is None:
                return False
            position = found.end()
        start = len(text) - last_width
        return start >= position and last.fullmatch(text, start) is not None

    return match


def _glob_pieces(pattern: str) -> list[list[str]]:
    """The pattern's pieces between `*`s, each a list of one-character regexes."""
    pieces: list[list[str]] = [[]]
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "*":
            if pieces[-1] or len(pieces) == 1:
                pieces.append([])
            index += 1
        elif char == "?":
            pieces[-1].append("(?s:.)")
            index += 1
        elif char == "[":
            regex, index = _glob_class(pattern, index)
            pieces[-1].append(regex)
        else:
            pieces[-1].append(re.escape(char))
            index += 1
    return pieces


def _glob_class(pattern: str, start: int) -> tuple[str, int]:
    """One `[...]` set as a regex matching exactly one character (or a literal '[')."""
    index = start + 1
    negate = index < len(pattern) and pattern[index] == "!"
    index += negate
    body_start = index
    if index < len(pattern) and pattern[index] == "]":
        index += 1
    close = pattern.find("]", index)
    if close < 0:
        return re.escape("["), start + 1
    items = _class_items(pattern[body_start:close])
    if not items:
        return ("(?s:.)" if negate else "(?!)"), close + 1
    return f"[{'^' if negate else ''}{''.join(items)}]", close + 1


def _class_items(body: str) -> list[str]:
    items, index = [], 0
    while index < len(body):
        if index + 2 < len(body) and body[index + 1] == "-":
            low, high = body[index], body[index + 2]
            if low <= high:
                items.append(f"{re.escape(low)}-{re.escape(high)}")
            index += 3
        else:
            items.append(re.escape(body[index]))
            index += 1
    return items


# --------------------------------------------------------------------------- attributes


_DECIMAL_TEXT = re.compile(r"[+-]?[0-9]{1,60}(?:\.[0-9]{1,60})?")


def _attribute_reader(name: str, kind: str) -> Fn:
    coerce = _COERCIONS[kind]
    if kind == NUMBER:

        def read_number(env: EvalEnv) -> Any:
            value = env.request.attributes.get(name)
            return value if type(value) is int else coerce(name, value)

        return read_number
    return lambda env: coerce(name, env.request.attributes.get(name))


def _missing(name: str) -> EvaluationError:
    return EvaluationError(f"attribute '{name}' is not given for this request")


def _to_number(name: str, value: Any) -> Any:
    if value is None:
        raise _missing(name)
    if isinstance(value, str):
        text = value.strip()
        if _DECIMAL_TEXT.fullmatch(text):
            return float(text) if "." in text else int(text)
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int | float) and _is_finite(value):
        return value
    elif isinstance(value, Decimal) and _is_finite(value):
        return int(value) if value == value.to_integral_value() else float(value)
    raise EvaluationError(f"attribute '{name}' is not a number")


def _is_finite(value: float | Decimal) -> bool:
    return value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)


def _to_string(name: str, value: Any) -> str:
    if value is None:
        raise _missing(name)
    if not isinstance(value, str):
        raise EvaluationError(f"attribute '{name}' is not a string")
    return value


def _to_bool(name: str, value: Any) -> bool:
    if value is None:
        raise _missing(name)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise EvaluationError(f"attribute '{name}' is not true or false")


def _to_list(name: str, value: Any) -> tuple[str, ...] | frozenset[str]:
    if value is None:
        raise _missing(name)
    if isinstance(value, list | tuple | set | frozenset) and all(
        isinstance(item, str) for item in value
    ):
        return frozenset(value) if isinstance(value, set | frozenset) else tuple(value)
    raise EvaluationError(f"attribute '{name}' is not a list of strings")


_COERCIONS: Final[Mapping[str, Callable[[str, Any], Any]]] = MappingProxyType(
    {NUMBER: _to_number, STRING: _to_string, BOOL: _to_bool, LIST: _to_list}
)


# --------------------------------------------------------------------------- built-in names


def _session_level(env: EvalEnv) -> str:
    session = env.session
    if session is None or not session.events:
        return Level.AAL0.label
    return Level(max(event.level for event in session.events)).label


def _session_authenticated(env: EvalEnv) -> bool:
    session = env.session
    return session is not None and any(event.level >= Level.AAL1 for event in session.events)


def _session_age(env: EvalEnv) -> float:
    session = env.session
    return math.inf if session is None else env.now - session.created


def _session_idle(env: EvalEnv) -> float:
    session = env.session
    return math.inf if session is None else env.now - session.last_seen


def _session_auth_age(env: EvalEnv) -> float:
    session = env.session
    if session is None or not session.events:
        return math.inf
    return env.now - max(event.at for event in session.events)


def _session_amr(env: EvalEnv) -> tuple[str, ...]:
    session = env.session
    return () if session is None else session.amr()


def _user_field(field_name: str) -> Fn:
    def read(env: EvalEnv) -> str:
        session = env.session
        return "" if session is None else str(getattr(session.subject, field_name))

    return read


def _user_groups(env: EvalEnv) -> frozenset[str]:
    session = env.session
    return frozenset() if session is None else session.subject.groups


def _request_field(field_name: str) -> Fn:
    getter = operator.attrgetter(field_name)
    return lambda env: getter(env.request)


def _sql_fact(name: str, empty: object) -> Fn:
    """A fact of the SQL statement the postgres door judges (empty for other doors)."""
    return lambda env: env.request.statement.get(name, empty)


def _client_address(env: EvalEnv) -> IPAddress | None:
    return env.client_address


_SCHEMA_READERS: Final[Mapping[str, Fn]] = MappingProxyType(
    {
        "request.method": _request_field("method"),
        "request.host": _request_field("host"),
        "request.path": _request_field("path"),
        "request.scheme": _request_field("scheme"),
        "request.query": _request_field("query"),
        "request.user_agent": _request_field("user_agent"),
        "request.device": _request_field("device_id"),
        "request.action": _request_field("action"),
        "request.ip": _client_address,
        "user.id": _user_field("id"),
        "user.name": _user_field("name"),
        "user.email": _user_field("email"),
        "user.groups": _user_groups,
        "session.level": _session_level,
        "session.authenticated": _session_authenticated,
        "session.age": _session_age,
        "session.idle": _session_idle,
        "session.auth_age": _session_auth_age,
        "session.amr": _session_amr,
        "risk.score": lambda env: env.risk.score,
        "risk.level": lambda env: env.risk.level,
        "risk.signals": lambda env: env.risk.names,
        "risk.reasons": lambda env: env.risk.reasons,
        "network": _client_address,
        "ip": _client_address,
        "sql.database": _sql_fact("database", ""),
        "sql.kind": _sql_fact("kind", ""),
        "sql.kinds": _sql_fact("kinds", frozenset()),
        "sql.tables": _sql_fact("tables", frozenset()),
        "sql.columns": _sql_fact("columns", frozenset()),
        "sql.functions": _sql_fact("functions", frozenset()),
        "sql.unbounded": _sql_fact("unbounded", False),
    }
)
