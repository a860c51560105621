"""The Cloud Logging query language, parsed once and evaluated against LogEntry dicts
(the JSON shape of the Logging v2 API).

Supported: comparisons `path OP value` with OP one of `=`, `!=`, `=~`, `!~`, `:`, `>`,
`>=`, `<`, `<=`; quoted or bare values (`:*` tests presence); value lists
(`severity=(WARNING OR ERROR)`, `labels.k:("a" OR "b")`); severities compared by rank;
global restrictions (`"some text"` or a bare `word` alone: any field contains it, ignoring
case); the functions `SEARCH("text")`, `SEARCH(field, "text")` and `log_id("name")`;
`AND`, `OR`, `NOT`, `-` negation, parentheses, and implicit AND between adjacent terms.
As in Cloud Logging, `OR` binds tighter than `AND`: `a OR b AND c OR d` is
`(a OR b) AND (c OR d)`, and only upper-case `AND`/`OR`/`NOT` are operators. Anything else
(other functions, malformed input) is rejected with the position and what was expected
there, so a filter that would behave differently on Google Cloud never passes silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Protocol
from urllib.parse import unquote

from localcloud.errors import LocalCloudError
from localcloud.logsearch import SearchQueryError, as_text, compile_search, resolve

LogEntry = dict[str, Any]

SEVERITY_ORDER = {
    "DEFAULT": 0,
    "DEBUG": 100,
    "INFO": 200,
    "NOTICE": 300,
    "WARNING": 400,
    "ERROR": 500,
    "CRITICAL": 600,
    "ALERT": 700,
    "EMERGENCY": 800,
}
_TIME_FIELDS = {("timestamp",), ("receiveTimestamp",)}
_SEVERITY_FIELD = ("severity",)
_KEYWORDS = {"AND", "OR", "NOT"}
# Longest first, so `>=` is not read as `>` followed by a value starting with `=`.
_OPERATORS = (">=", "<=", "!=", "=~", "!~", "=", ":", ">", "<")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_FUNCTIONS = ("SEARCH", "log_id")
_RESTRICTION = 'a restriction (a comparison such as resource.type="ml_job", a function or text)'
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?)?"
    r"(Z|z|[+-]\d{2}:?\d{2})?"
)


class FilterSyntaxError(LocalCloudError):
    """A filter outside the supported grammar; `position` is a 0-based character offset."""

    def __init__(self, text: str, position: int, expected: str) -> None:
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        found = repr(text[position : position + 20]) if position < len(text) else "end of filter"
        super().__init__(
            f"log filter: expected {expected} at position {position} "
            f"(line {line}, column {column}), found {found}"
        )
        self.position = position
        self.expected = expected


class Filter(Protocol):
    def matches(self, entry: LogEntry) -> bool: ...


# --- timestamps and severities -------------------------------------------------------------

Instant = tuple[datetime, int]  # (UTC time to the second, nanoseconds)


def parse_timestamp(text: str) -> Instant | None:
    """RFC3339 with up to nanosecond precision, `Z` or a numeric offset (with or without
    a colon: the official client writes `+0000`). A bare date means its midnight, UTC."""
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        moment = datetime(
            int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0)
        )
    except ValueError:
        return None
    zone = UTC
    if offset and offset not in ("Z", "z"):
        sign = -1 if offset[0] == "-" else 1
        digits = offset[1:].replace(":", "")
        zone = timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
    nanos = int((fraction or "").ljust(9, "0"))
    return moment.replace(tzinfo=zone).astimezone(UTC), nanos


def severity_rank(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        name = value.strip().upper()
        if name in SEVERITY_ORDER:
            return SEVERITY_ORDER[name]
        if name.isdigit():
            return int(name)
    return None


# --- the syntax tree -----------------------------------------------------------------------


@dataclass(frozen=True)
class And:
    terms: tuple[Filter, ...]

    def matches(self, entry: LogEntry) -> bool:
        return all(term.matches(entry) for term in self.terms)


@dataclass(frozen=True)
class Or:
    terms: tuple[Filter, ...]

    def matches(self, entry: LogEntry) -> bool:
        return any(term.matches(entry) for term in self.terms)


@dataclass(frozen=True)
class Not:
    term: Filter

    def matches(self, entry: LogEntry) -> bool:
        return not self.term.matches(entry)


@dataclass(frozen=True)
class Comparison:
    path: tuple[str, ...]
    operator: str
    value: str
    pattern: re.Pattern[str] | None = None
    instant: Instant | None = None
    severity: int | None = None

    def matches(self, entry: LogEntry) -> bool:
        if self.path == _SEVERITY_FIELD and "severity" not in entry:
            # proto3 JSON omits the default enum value: no severity means DEFAULT.
            return self._matches_leaf("DEFAULT")
        # A field that is absent never matches; repeated fields match if any element does.
        return any(self._matches_leaf(leaf) for leaf in resolve(entry, self.path))

    def _matches_leaf(self, leaf: Any) -> bool:
        op = self.operator
        if op == ":":
            return self.value == "*" or _contains(leaf, self.value.casefold())
        if isinstance(leaf, dict | list):
            return False
        if op in ("=~", "!~"):
            assert self.pattern is not None
            found = self.pattern.search(as_text(leaf)) is not None
            return found if op == "=~" else not found
        ordering = self._compare(leaf)
        if ordering is None:
            return False
        return {
            "=": ordering == 0,
            "!=": ordering != 0,
            "<": ordering < 0,
            "<=": ordering <= 0,
            ">": ordering > 0,
            ">=": ordering >= 0,
        }[op]

    def _compare(self, leaf: Any) -> int | None:
        """-1, 0 or 1 as the entry's value sorts before, equal to or after the filter's;
        None when the entry's value cannot be compared (never matches)."""
        left: Any
        right: Any
        if self.instant is not None:
            left, right = parse_timestamp(as_text(leaf)), self.instant
        elif self.severity is not None:
            left, right = severity_rank(leaf), self.severity
        elif isinstance(leaf, int | float) and not isinstance(leaf, bool):
            left, right = float(leaf), _as_number(self.value)
        else:
            # Cloud Logging compares strings without regard to case.
            left, right = as_text(leaf).casefold(), self.value.casefold()
        if left is None or right is None:
            return None
        return (left > right) - (left < right)


@dataclass(frozen=True)
class GlobalText:
    """A bare `word` or `"text"` standing alone: some field of the entry contains it."""

    text: str

    def matches(self, entry: LogEntry) -> bool:
        return _contains(entry, self.text.casefold())


@dataclass(frozen=True)
class LogId:
    """`log_id("name")`: the entry's log, whatever its project, is `name` (decoded)."""

    log_id: str

    def matches(self, entry: LogEntry) -> bool:
        log_name = str(entry.get("logName", ""))
        return "/logs/" in log_name and unquote(log_name.split("/logs/", 1)[1]) == self.log_id


def _contains(value: Any, needle: str) -> bool:
    if isinstance(value, dict):
        return any(_contains(item, needle) for item in value.values())
    if isinstance(value, list):
        return any(_contains(item, needle) for item in value)
    return needle in as_text(value).casefold()


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


# --- the parser ----------------------------------------------------------------------------


class _Parser:
    """Recursive descent over characters: whether `x:y` is a path, an operator or part of a
    bare value depends on where it stands, so there is no separate tokenizer."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def parse(self) -> Filter:
        self._skip_space()
        if self._at_end():
            raise self._error('a comparison such as resource.type="ml_job"')
        expression = self._conjunction()
        if not self._at_end():
            raise self._error("AND, OR or the end of the filter")
        return expression

    # Lowest precedence: AND, explicit or implicit between adjacent terms.
    def _conjunction(self) -> Filter:
        terms = [self._disjunction()]
        while True:
            self._skip_space()
            if self._at_end() or self._peek() == ")":
                break
            self._keyword("AND")
            terms.append(self._disjunction())
        return terms[0] if len(terms) == 1 else And(tuple(terms))

    def _disjunction(self) -> Filter:
        terms = [self._unary()]
        while self._keyword("OR"):
            terms.append(self._unary())
        return terms[0] if len(terms) == 1 else Or(tuple(terms))

    def _unary(self) -> Filter:
        self._skip_space()
        if self._keyword("NOT"):
            return Not(self._unary())
        if self._peek() == "-":
            self.pos += 1
            return Not(self._unary())
        return self._primary()

    def _primary(self) -> Filter:
        self._skip_space()
        if self._peek() == "(":
            self.pos += 1
            self._skip_space()
            if self._peek() == ")":
                raise self._error("an expression inside the parentheses")
            inner = self._conjunction()
            self._skip_space()
            if self._peek() != ")":
                raise self._error("')' to close the parenthesis")
            self.pos += 1
            return inner
        return self._function() or self._comparison() or self._global_restriction()

    def _function(self) -> Filter | None:
        """`NAME(` with no space before the parenthesis is a function call."""
        match = _IDENTIFIER.match(self.text, self.pos)
        if match is None or not self.text.startswith("(", match.end()):
            return None
        name = match.group()
        if name not in _FUNCTIONS:
            raise self._error(f"a supported function ({', '.join(_FUNCTIONS)})")
        self.pos = match.end() + 1
        call = self._search_arguments() if name == "SEARCH" else LogId(self._string_argument())
        self._skip_space()
        if self._peek() != ")":
            raise self._error(f"')' to close the arguments of {name}")
        self.pos += 1
        return call

    def _search_arguments(self) -> Filter:
        """`"query"` or `field, "query"`."""
        self._skip_space()
        start = self.pos
        path: tuple[str, ...] | None = None
        if self._peek() == ")":
            raise self._error("a quoted search text")
        if self._peek() == '"':
            # A quoted first argument is the query unless a path goes on from it.
            self._quoted()
            self._skip_space()
            quoted_path = self._peek() in (",", ".")
            self.pos = start
            if quoted_path:
                path = self._path()
        else:
            path = self._path()
        if path is not None:
            self._skip_space()
            if self._peek() != ",":
                raise self._error("',' between the field and the search text")
            self.pos += 1
        self._skip_space()
        query_at = self.pos
        query = self._string_argument()
        try:
            return compile_search(path, query)
        except SearchQueryError as err:
            # Point into the quoted text: past the opening quote, at the offending character.
            raise FilterSyntaxError(self.text, query_at + 1 + err.offset, err.expected) from err

    def _string_argument(self) -> str:
        self._skip_space()
        if self._peek() != '"':
            raise self._error("a quoted string argument")
        return self._quoted()

    def _comparison(self) -> Filter | None:
        """`path OP value`; None (and nothing consumed) when no operator follows a path."""
        start = self.pos
        try:
            path = self._path()
        except FilterSyntaxError:
            self.pos = start
            return None
        self._skip_space()
        operator_at = self.pos
        operator = next((op for op in _OPERATORS if self.text.startswith(op, self.pos)), None)
        if operator is None:
            self.pos = start
            return None
        self.pos += len(operator)
        self._skip_space()
        if self._peek() == "(":
            self.pos += 1
            return self._value_list(path, operator, operator_at)
        value_at = self.pos
        value = self._value()
        return self._build(path, operator, value, operator_at, value_at)

    def _global_restriction(self) -> Filter:
        """Text alone, quoted or a bare word, to be found in any field."""
        if self._peek() == '"':
            return GlobalText(self._quoted())
        if self._at_end() or self._peek() in ")=!<>:~":
            raise self._error(_RESTRICTION)
        start = self.pos
        word = self._value()
        if word in _KEYWORDS:
            self.pos = start
            raise self._error(f"{_RESTRICTION}, not the keyword {word}")
        return GlobalText(word)

    # A value list `path OP (v1 OR v2 ...)` is the comparison with each value, combined
    # with the list's own AND, OR and NOT (same precedence as outside).
    def _value_list(self, path: tuple[str, ...], operator: str, operator_at: int) -> Filter:
        self._skip_space()
        if self._peek() == ")":
            raise self._error("a value inside the parentheses")
        terms = [self._value_disjunction(path, operator, operator_at)]
        while True:
            self._skip_space()
            if self._peek() == ")":
                self.pos += 1
                return terms[0] if len(terms) == 1 else And(tuple(terms))
            if self._at_end():
                raise self._error("')' to close the list of values")
            self._keyword("AND")
            terms.append(self._value_disjunction(path, operator, operator_at))

    def _value_disjunction(self, path: tuple[str, ...], operator: str, operator_at: int) -> Filter:
        terms = [self._value_term(path, operator, operator_at)]
        while self._keyword("OR"):
            terms.append(self._value_term(path, operator, operator_at))
        return terms[0] if len(terms) == 1 else Or(tuple(terms))

    def _value_term(self, path: tuple[str, ...], operator: str, operator_at: int) -> Filter:
        self._skip_space()
        if self._keyword("NOT"):
            return Not(self._value_term(path, operator, operator_at))
        if self._peek() == "(":
            self.pos += 1
            return self._value_list(path, operator, operator_at)
        value_at = self.pos
        value = self._value()
        if value in _KEYWORDS and self.text[value_at] != '"':
            self.pos = value_at
            raise self._error(f"a value, not the keyword {value}")
        return self._build(path, operator, value, operator_at, value_at)

    def _build(
        self, path: tuple[str, ...], operator: str, value: str, operator_at: int, value_at: int
    ) -> Comparison:
        if operator in ("=~", "!~"):
            try:
                return Comparison(path, operator, value, pattern=re.compile(value))
            except re.error as err:
                raise FilterSyntaxError(
                    self.text, value_at, f"a valid regular expression ({err})"
                ) from err
        ordered = operator not in (":",)
        if ordered and path in _TIME_FIELDS:
            instant = parse_timestamp(value)
            if instant is None:
                raise FilterSyntaxError(self.text, value_at, "an RFC3339 timestamp")
            return Comparison(path, operator, value, instant=instant)
        if ordered and path == _SEVERITY_FIELD:
            rank = severity_rank(value)
            if rank is None:
                names = ", ".join(SEVERITY_ORDER)
                raise FilterSyntaxError(self.text, value_at, f"a severity ({names})")
            return Comparison(path, operator, value, severity=rank)
        if value == "*" and operator != ":":
            raise FilterSyntaxError(self.text, operator_at, "':' before '*' (presence test)")
        return Comparison(path, operator, value)

    def _path(self) -> tuple[str, ...]:
        segments = [self._segment()]
        while self._peek() == ".":
            self.pos += 1
            segments.append(self._segment())
        return tuple(segments)

    def _segment(self) -> str:
        if self._peek() == '"':
            return self._quoted()
        match = _IDENTIFIER.match(self.text, self.pos)
        if match is None:
            raise self._error("a field name (letters, digits, '_' or a quoted name)")
        name = match.group()
        if name in _KEYWORDS:
            raise self._error(f"a field name, not the keyword {name}")
        self.pos = match.end()
        return name

    def _value(self) -> str:
        if self._peek() == '"':
            return self._quoted()
        start = self.pos
        while (
            not self._at_end() and not self.text[self.pos].isspace() and self._peek() not in '()"'
        ):
            self.pos += 1
        if self.pos == start:
            raise self._error("a value (a quoted string or a bare word)")
        return self.text[start : self.pos]

    def _quoted(self) -> str:
        start = self.pos
        self.pos += 1
        chars: list[str] = []
        while not self._at_end():
            char = self.text[self.pos]
            if char == '"':
                self.pos += 1
                return "".join(chars)
            if char == "\\" and self.pos + 1 < len(self.text):
                escaped = self.text[self.pos + 1]
                # Only quote and backslash are unescaped: `\d` and friends reach the regex.
                chars.append(escaped if escaped in '"\\' else char + escaped)
                self.pos += 2
                continue
            chars.append(char)
            self.pos += 1
        raise FilterSyntaxError(self.text, start, "a closing '\"' for the string starting here")

    def _keyword(self, word: str) -> bool:
        """Consume `word` if it stands here as a whole word (`ORDER` is a field name)."""
        self._skip_space()
        end = self.pos + len(word)
        if not self.text.startswith(word, self.pos):
            return False
        if end < len(self.text) and not (self.text[end].isspace() or self.text[end] in "()"):
            return False
        self.pos = end
        return True

    def _skip_space(self) -> None:
        while not self._at_end() and self.text[self.pos].isspace():
            self.pos += 1

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _at_end(self) -> bool:
        return self.pos >= len(self.text)

    def _error(self, expected: str) -> FilterSyntaxError:
        return FilterSyntaxError(self.text, self.pos, expected)


def compile_filter(text: str) -> Filter:
    """Parse a Cloud Logging filter once; raises FilterSyntaxError naming the position and
    what was expected. An empty (or blank) filter matches every entry, as in the API."""
    if not text.strip():
        return And(())
    return _Parser(text).parse()
