"""List requests: filters (filters.py), `order_by`, and page tokens."""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from localcloud.vertex import filters
from localcloud.vertex.wire import invalid

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

# A sort key per orderable field: the value a resource sorts by.
SortKeys = Mapping[str, Callable[[Any], Any]]


def select(
    resources: Sequence[Any],
    query: Mapping[str, str],
    schema: Mapping[str, filters.Field],
    fields: Callable[[Any, str], Any],
) -> list[Any]:
    """The resources the request's `filter` keeps; `fields(resource, name)` gives a
    resource's value for a filter field."""
    keep = filters.compile_filter(query.get("filter", ""), schema)
    return [resource for resource in resources if keep(functools.partial(fields, resource))]


def order(resources: list[Any], order_by: str, keys: SortKeys) -> None:
    """Sort in place by `order_by` ("create_time desc, display_name"): a comma-separated
    list of fields, each ascending unless followed by `desc`."""
    plan: list[tuple[Callable[[Any], Any], bool]] = []
    for part in (p.strip() for p in order_by.split(",")):
        words = part.split()
        if not words or len(words) > 2 or (len(words) == 2 and words[1] not in ("asc", "desc")):
            raise invalid(
                f"Invalid order_by {order_by!r}: expected FIELD [asc|desc], comma-separated"
            )
        name = filters.snake_case(words[0])
        if name not in keys:
            raise invalid(
                f"Invalid order_by {order_by!r}: cannot order by {words[0]!r}; supported fields "
                f"are {', '.join(sorted(keys))}"
            )
        plan.append((keys[name], len(words) == 2 and words[1] == "desc"))
    # Stable sorts, least significant key first.
    for key, descending in reversed(plan):
        resources.sort(key=key, reverse=descending)


def time_key(stamp: Any) -> tuple[int, int]:
    return stamp.seconds, stamp.nanos


def respond(
    found: list[Any],
    query: Mapping[str, str],
    response_type: Any,
    field: str,
    *,
    newest_first: bool = True,
    sort_keys: SortKeys | None = None,
) -> Any:
    """One page of `found` as a List*Response, with the next page token: in the request's
    `orderBy` when it has one (and `sort_keys` says the method takes one), else newest
    first (as Vertex lists)."""
    if newest_first:
        found.sort(key=lambda r: time_key(r.create_time), reverse=True)
    order_by = query.get("orderBy", "")
    if order_by and sort_keys is None:
        # What Google's REST gateway answers for a query parameter the request lacks.
        raise invalid(
            'Invalid JSON payload received. Unknown name "orderBy": Cannot bind query '
            "parameter. Field 'orderBy' could not be found in request message."
        )
    if order_by and sort_keys is not None:
        order(found, order_by, sort_keys)
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
