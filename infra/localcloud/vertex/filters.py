"""List filters in Google's filtering language (AIP-160), as Vertex AI's List methods take
them: comparisons (`=`, `!=`, `<`, `<=`, `>`, `>=`, `:`), `AND`, `OR`, `NOT` / `-`,
parentheses, and label maps (`labels.k="v"`, `labels.k:*`, `labels:k`).

As in AIP-160, `OR` binds tighter than `AND` (`a AND b OR c` is `a AND (b OR c)`) and
terms side by side are ANDed. Each resource declares the fields it can be filtered on and
which operators each takes; anything else is refused with INVALID_ARGUMENT naming the
problem, rather than silently matching everything."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from localcloud.vertex.wire import invalid

# A resource's value for a (snake_case) field name: a str, a Timestamp or a labels map.
Accessor = Callable[[str], Any]
Predicate = Callable[[Accessor], bool]

EQUALITY = frozenset({"=", "!="})
ORDERING = frozenset({"=", "!=", "<", "<=", ">", ">="})
_COMPARATORS = ("<=", ">=", "!=", "=", "<", ">", ":")  # longest first
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LABEL_KEY = re.compile(r"[A-Za-z0-9_.-]+")
_BARE_VALUE = re.compile(r'[^\s()"]+')


@dataclass(frozen=True)
class Field:
    """One filterable field: its kind and the comparators it takes."""

    kind: str  # "string" | "enum" | "timestamp" | "labels"
    operators: frozenset[str]
    values: frozenset[str] = field(default_factory=frozenset)  # enum names, for "enum"


def string(*extra: str) -> Field:
    return Field("string", EQUALITY | frozenset(extra))


def enum(names: Any) -> Field:
    return Field("enum", EQUALITY, frozenset(names))


TIMESTAMP = Field("timestamp", ORDERING)
LABELS = Field("labels", frozenset({"=", "!=", ":"}))


def compile_filter(text: str, schema: Mapping[str, Field]) -> Predicate:
    """The predicate `text` means over resources with these fields; an empty filter
    matches everything."""
    if not text.strip():
        return lambda _: True
    return _Parser(text, schema).parse()


def snake_case(name: str) -> str:
    """Vertex takes field names in snake_case or camelCase: `createTime` = `create_time`."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


class _Parser:
    """Recursive descent over AIP-160's grammar:

    expression = sequence {AND sequence}
    sequence   = factor {factor}
    factor     = term {OR term}
    term       = [NOT | "-"] simple
    simple     = "(" expression ")" | field comparator value
    """

    def __init__(self, text: str, schema: Mapping[str, Field]) -> None:
        self.text = text
        self.schema = schema
        self.pos = 0

    def parse(self) -> Predicate:
        predicate = self._expression()
        self._skip_space()
        if self.pos < len(self.text):
            raise self._error("unexpected text")
        return predicate

    # -- grammar ---------------------------------------------------------------------

    def _expression(self) -> Predicate:
        parts = [self._sequence()]
        while self._keyword("AND"):
            parts.append(self._sequence())
        return _all(parts)

    def _sequence(self) -> Predicate:
        parts = [self._factor()]
        while self._starts_term():
            parts.append(self._factor())
        return _all(parts)

    def _factor(self) -> Predicate:
        parts = [self._term()]
        while self._keyword("OR"):
            parts.append(self._term())
        return _any(parts)

    def _term(self) -> Predicate:
        self._skip_space()
        negated = self._keyword("NOT")
        if not negated and self._peek("-"):
            self.pos += 1
            negated = True
        inner = self._simple()
        return (lambda get: not inner(get)) if negated else inner

    def _simple(self) -> Predicate:
        self._skip_space()
        if self._peek("("):
            self.pos += 1
            inner = self._expression()
            self._skip_space()
            if not self._peek(")"):
                raise self._error("expected ')'")
            self.pos += 1
            return inner
        return self._restriction()

    def _restriction(self) -> Predicate:
        start = self.pos
        name, label_key = self._field_name()
        spec = self.schema.get(name)
        if spec is None:
            raise invalid(
                f"Unsupported filter field {self.text[start : self.pos]!r} in {self.text!r}: "
                f"supported fields are {', '.join(sorted(self.schema))}"
            )
        self._skip_space()
        operator = next((op for op in _COMPARATORS if self.text.startswith(op, self.pos)), None)
        if operator is None:
            raise self._error(f"expected a comparison (=, !=, <, <=, >, >=, :) after {name!r}")
        self.pos += len(operator)
        self._skip_space()
        value = self._value()
        return _restriction(name, label_key, spec, operator, value, self.text)

    # -- lexical -----------------------------------------------------------------------

    def _field_name(self) -> tuple[str, str | None]:
        match = _NAME.match(self.text, self.pos)
        if match is None:
            raise self._error("expected a field name")
        self.pos = match.end()
        name = snake_case(match.group())
        if name != "labels" or not self._peek("."):
            return name, None
        self.pos += 1
        if self._peek('"'):
            return name, self._quoted()
        key = _LABEL_KEY.match(self.text, self.pos)
        if key is None:
            raise self._error("expected a label key after 'labels.'")
        self.pos = key.end()
        return name, key.group()

    def _value(self) -> str:
        if self._peek('"'):
            return self._quoted()
        match = _BARE_VALUE.match(self.text, self.pos)
        if match is None:
            raise self._error("expected a value")
        self.pos = match.end()
        return match.group()

    def _quoted(self) -> str:
        start = self.pos
        self.pos += 1
        chars: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\\" and self.pos + 1 < len(self.text):
                chars.append(self.text[self.pos + 1])
                self.pos += 2
            elif char == '"':
                self.pos += 1
                return "".join(chars)
            else:
                chars.append(char)
                self.pos += 1
        self.pos = start
        raise self._error("unterminated string")

    def _keyword(self, word: str) -> bool:
        # Keywords are matched case-insensitively: callers long wrote `and`.
        self._skip_space()
        end = self.pos + len(word)
        if self.text[self.pos : end].upper() != word:
            return False
        if end < len(self.text) and not (self.text[end].isspace() or self.text[end] == "("):
            return False
        self.pos = end
        return True

    def _starts_term(self) -> bool:
        self._skip_space()
        if self.pos >= len(self.text) or self._peek(")"):
            return False
        saved = self.pos
        is_keyword = self._keyword("AND") or self._keyword("OR")
        self.pos = saved
        return not is_keyword

    def _peek(self, char: str) -> bool:
        return self.text.startswith(char, self.pos)

    def _skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def _error(self, problem: str) -> Exception:
        rest = self.text[self.pos :] or "end of filter"
        return invalid(f"Invalid filter {self.text!r}: {problem} at position {self.pos} ({rest!r})")


def _restriction(
    name: str, label_key: str | None, spec: Field, operator: str, value: str, text: str
) -> Predicate:
    shown = f"labels.{label_key}" if label_key is not None else name
    if spec.kind == "labels" and label_key is None:
        if operator != ":":
            raise invalid(
                f"Invalid filter {text!r}: use labels.KEY{operator}VALUE, or labels:KEY to test "
                "that a label is present"
            )
        return lambda get: value in get("labels")
    if operator not in spec.operators:
        raise invalid(
            f"Invalid filter {text!r}: {shown} does not support {operator!r}; it supports "
            + ", ".join(sorted(spec.operators))
        )
    if spec.kind == "labels":
        return _label_test(label_key or "", operator, value)
    if spec.kind == "timestamp":
        return _time_test(name, operator, _timestamp(shown, value, text))
    if spec.kind == "enum" and value not in spec.values:
        raise invalid(
            f"Invalid filter {text!r}: {value!r} is not a {shown}; use one of "
            + ", ".join(sorted(spec.values))
        )
    if operator == ":":
        return lambda get: _has(str(get(name)), value)
    equal = operator == "="
    return lambda get: (str(get(name)) == value) == equal


def _label_test(key: str, operator: str, value: str) -> Predicate:
    if operator == ":" and value == "*":
        return lambda get: key in get("labels")  # present, whatever its value
    if operator == ":":
        return lambda get: key in get("labels") and _has(get("labels")[key], value)
    equal = operator == "="
    return lambda get: (get("labels").get(key) == value) == equal


def _has(actual: str, pattern: str) -> bool:
    """AIP-160's `:` on a string: `*` alone means present; a pattern with `*` matches as
    a wildcard; anything else is a substring."""
    if pattern == "*":
        return actual != ""
    if "*" in pattern:
        escaped = re.escape(pattern).replace(r"\*", ".*")
        return re.fullmatch(escaped, actual, re.DOTALL) is not None
    return pattern in actual


def _timestamp(shown: str, value: str, text: str) -> tuple[int, int]:
    stamp = Timestamp()
    try:
        stamp.FromJsonString(value)
    except ValueError as err:
        raise invalid(
            f"Invalid filter {text!r}: {shown} takes an RFC 3339 timestamp such as "
            f'"2026-01-01T00:00:00Z", got {value!r}'
        ) from err
    return stamp.seconds, stamp.nanos


def _time_test(name: str, operator: str, wanted: tuple[int, int]) -> Predicate:
    compare: dict[str, Callable[[tuple[int, int], tuple[int, int]], bool]] = {
        "=": lambda a, b: a == b,
        "!=": lambda a, b: a != b,
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
    }
    test = compare[operator]

    def check(get: Accessor) -> bool:
        stamp = get(name)
        if stamp is None or (stamp.seconds, stamp.nanos) == (0, 0):
            return operator == "!="  # an unset time equals nothing
        return test((stamp.seconds, stamp.nanos), wanted)

    return check


def _all(parts: list[Predicate]) -> Predicate:
    if len(parts) == 1:
        return parts[0]
    return lambda get: all(part(get) for part in parts)


def _any(parts: list[Predicate]) -> Predicate:
    if len(parts) == 1:
        return parts[0]
    return lambda get: any(part(get) for part in parts)
