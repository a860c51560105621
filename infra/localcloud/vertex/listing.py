"""List requests: the subset of Vertex's filter language the product uses, and page
tokens."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from localcloud.vertex.wire import invalid

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

# One `field = value` (or `!=`) clause; the value is a double-quoted string or a bare word.
_CLAUSE = re.compile(
    r"""\s*(?P<field>labels\.[A-Za-z0-9_.-]+|[A-Za-z_]+)\s*(?P<op>!?=)\s*
        (?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<bare>[^\s"()]+))\s*""",
    re.VERBOSE,
)
_AND = re.compile(r"AND\b", re.IGNORECASE)


@dataclass(frozen=True)
class Clause:
    field: str  # "labels.<key>", "state" or "display_name"
    value: str
    negated: bool = False  # `!=`: Vertex supports it for state, labels and display_name


def parse_filter(text: str, allowed: Sequence[str]) -> list[Clause]:
    """`a="x" AND labels.k=v ...` -> clauses; anything else is refused, naming it,
    rather than silently matching everything."""
    clauses: list[Clause] = []
    position = 0
    text = text.strip()
    while position < len(text):
        if clauses:
            joiner = _AND.match(text, position)
            if joiner is None:
                raise invalid(
                    f"Unsupported filter {text!r}: expected AND at {text[position:]!r}; "
                    "only clauses joined by AND are supported"
                )
            position = joiner.end()
        match = _CLAUSE.match(text, position)
        if match is None:
            raise invalid(
                f"Unsupported filter {text!r} at {text[position:]!r}: supported clauses are "
                + ", ".join(f'{name}="value"' for name in allowed)
                + " joined by AND"
            )
        field_name = match["field"]
        base = "labels" if field_name.startswith("labels.") else field_name
        if base not in allowed:
            raise invalid(
                f"Unsupported filter field {field_name!r} in {text!r}: supported fields are "
                + ", ".join(allowed)
            )
        quoted = match["quoted"]
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else match["bare"]
        clauses.append(Clause(field=field_name, value=value, negated=match["op"] == "!="))
        position = match.end()
    return clauses


def matches(clauses: Sequence[Clause], fields: Callable[[str], Any]) -> bool:
    """`fields(name)` gives a resource's value for a clause field (a labels map for
    "labels", a string otherwise)."""
    for clause in clauses:
        if clause.field.startswith("labels."):
            actual = fields("labels").get(clause.field.removeprefix("labels."))
        else:
            actual = fields(clause.field)
        if (actual == clause.value) == clause.negated:
            return False
    return True


def respond(
    found: list[Any],
    query: Mapping[str, str],
    response_type: Any,
    field: str,
    *,
    newest_first: bool = True,
) -> Any:
    """One page of `found` as a List*Response: newest first (as Vertex lists), with the
    next page token."""
    if newest_first:
        found.sort(key=lambda r: (r.create_time.seconds, r.create_time.nanos), reverse=True)
    items, token = page(found, int_param(query, "pageSize"), query.get("pageToken", ""))
    response = response_type.pb()(next_page_token=token)
    getattr(response, field).extend(items)
    return response


def page(items: Sequence[T], page_size: int, page_token: str) -> tuple[list[T], str]:
    """One page of `items` and the token of the next ("" on the last page)."""
    if page_size < 0:
        raise invalid(f"page_size must not be negative, got {page_size}")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    start = _decode_token(page_token)
    end = start + size
    next_token = _encode_token(end) if end < len(items) else ""
    return list(items[start:end]), next_token


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _decode_token(token: str) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        kind, _, number = text.partition(":")
        if kind != "offset":
            raise ValueError(kind)
        return max(0, int(number))
    except ValueError as err:
        raise invalid(f"Invalid page_token {token!r}: pass the next_page_token of a list") from err


def in_location(name: str, project: str, location: str) -> bool:
    return name.startswith(f"projects/{project}/locations/{location}/")


def int_param(query: Mapping[str, str], key: str) -> int:
    raw = query.get(key, "0") or "0"
    try:
        return int(raw)
    except ValueError as err:
        raise invalid(f"{key} must be an integer, got {raw!r}") from err
