"""JSON from strangers, decoded within bounds.

Python's `json` recurses once per nesting level (a few thousand `[` end in RecursionError)
and converts every integer literal with `int()` (past 4300 digits: ValueError, and the
conversion is quadratic below that). Neither is a JSONDecodeError, so a caller that
catches only that answers HTTP 500 and the sender retries for a day. `hazard` finds both
with a linear scan before any parser runs. `loads` refuses deep nesting and decodes an
integer literal longer than MAX_DIGITS as a `HugeNumber`, so that the field holding it can
be named in the rejection rather than the whole document refused.

The scan is used twice: by the parser on Pub/Sub message data, and by the HTTP guard on
request bodies before functions-framework (and the CloudEvents SDK in it) parse them.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

MAX_DEPTH = 64  # our payloads nest about 8 deep (envelope, message, LogEntry, labels)
MAX_DIGITS = 100  # an int64 has 19 digits, a float's repr 17 significant ones

# A JSON string, escapes included; an unterminated one runs to the end of the text.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\Z)', re.DOTALL)
_LONG_DIGITS = re.compile(rb"\d{%d,}" % (MAX_DIGITS + 1))
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_DELTA = [0] * 256
for _open in b"[{":
    _DELTA[_open] = 1
for _close in b"]}":
    _DELTA[_close] = -1


class JsonRejected(ValueError):
    """The text is not JSON, or JSON this product refuses to decode."""


class HugeNumber:
    """An integer literal too long to be any value this product accepts. Deliberately not
    an int: no code can take it for a number."""

    def __init__(self, digits: int):
        self.digits = digits

    def __repr__(self) -> str:
        return f"<a number of {self.digits} digits>"


def hazard(text: bytes | bytearray | str, *, digits: bool = True) -> str | None:
    """What makes `text` unsafe to hand to a JSON parser, or None. Outside strings: nesting
    deeper than MAX_DEPTH, or (with `digits`) a run of more than MAX_DIGITS digits."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    outside = _STRING.sub(b'""', raw)
    if digits and _LONG_DIGITS.search(outside):
        return f"a number has more than {MAX_DIGITS} digits"
    brackets = outside.translate(None, _NOT_BRACKET)
    if brackets and max(accumulate(map(_DELTA.__getitem__, brackets))) > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} levels"
    return None


def loads(text: bytes | bytearray | str) -> Any:
    """Decode UTF-8 JSON text, or raise JsonRejected saying why not."""
    problem = hazard(text, digits=False)
    if problem:
        raise JsonRejected(problem)
    try:
        decoded = text.decode("utf-8") if isinstance(text, bytes | bytearray) else text
        return json.loads(decoded, parse_int=_int)
    except UnicodeDecodeError as err:
        raise JsonRejected(f"not UTF-8: {err.reason} at byte {err.start}") from err
    except json.JSONDecodeError as err:
        raise JsonRejected(str(err)) from err
    except (ValueError, RecursionError) as err:  # what the scan should have caught
        raise JsonRejected(f"undecodable ({type(err).__name__})") from err


def _int(literal: str) -> int | HugeNumber:
    digits = len(literal.lstrip("-"))
    return int(literal) if digits <= MAX_DIGITS else HugeNumber(digits)
