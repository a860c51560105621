"""Text search in log entries, as the Logging query language's `SEARCH` function does it.

Cloud Logging tokenizes like BigQuery's LOG_ANALYZER: ASCII letters are lower-cased and
text is split at punctuation, whitespace and a few percent-escapes. `SEARCH("a b")`
matches when every token of the query is a token of the data (in any field, in any
order); a part of the query in backticks is a phrase that must appear as written (case
aside), starting and ending at token boundaries."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

LogEntry = dict[str, Any]

# LOG_ANALYZER's delimiters; the escapes come first so `%20` is one delimiter, not `%`+`20`.
_ESCAPES = (
    "%2526", "%2520", "%21", "%26", "%3b", "%7c", "%20", "%2b",
    "%3d", "%5d", "%5b", "%3a", "%0a", "%2c", "%28", "%29",
)  # fmt: skip
_DELIMITER_CHARS = "[]<>(){}|!;,'\"*&?+/:=@.-$%\\_ \n\r\t"
_SPLIT = re.compile("|".join([*_ESCAPES, "[" + re.escape(_DELIMITER_CHARS) + "]"]))
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class SearchQueryError(ValueError):
    """A query SEARCH cannot run; `offset` is where in the query text the problem is."""

    def __init__(self, offset: int, expected: str) -> None:
        super().__init__(expected)
        self.offset = offset
        self.expected = expected


def normalize(text: str) -> str:
    """Lower-case ASCII letters only: characters above 127 are kept as they are."""
    return text.translate(_ASCII_LOWER)


def tokens(text: str) -> list[str]:
    return [token for token in _SPLIT.split(normalize(text)) if token]


@dataclass(frozen=True)
class Search:
    """`SEARCH(query)` over every field, or `SEARCH(field, query)` over one."""

    path: tuple[str, ...] | None
    words: frozenset[str]
    phrases: tuple[str, ...]

    def matches(self, entry: LogEntry) -> bool:
        roots = [entry] if self.path is None else list(resolve(entry, self.path))
        texts = [normalize(as_text(leaf)) for root in roots for leaf in leaves(root)]
        if not texts:
            return False
        found = {token for text in texts for token in tokens(text)}
        return self.words <= found and all(
            any(_has_phrase(text, phrase) for text in texts) for phrase in self.phrases
        )


def compile_search(path: tuple[str, ...] | None, query: str) -> Search:
    """Split `query` into words and backticked phrases; raises SearchQueryError."""
    words: set[str] = set()
    phrases: list[str] = []
    outside = True
    start = 0
    for index, char in enumerate(query + "`"):
        if char != "`":
            continue
        if index == len(query) and not outside:
            raise SearchQueryError(start - 1, "a closing '`' for the phrase starting here")
        part = query[start:index]
        if outside:
            words.update(tokens(part))
        elif part:
            phrases.append(normalize(part))
        outside = not outside
        start = index + 1
    if not words and not phrases:
        raise SearchQueryError(0, "a search text with at least one word")
    return Search(path, frozenset(words), tuple(phrases))


def _has_phrase(text: str, phrase: str) -> bool:
    """`phrase` in `text`, beginning and ending where tokens begin and end."""
    at = text.find(phrase)
    while at >= 0:
        end = at + len(phrase)
        before_ok = at == 0 or text[at - 1] in _DELIMITER_CHARS or phrase[0] in _DELIMITER_CHARS
        after_ok = (
            end == len(text) or text[end] in _DELIMITER_CHARS or phrase[-1] in _DELIMITER_CHARS
        )
        if before_ok and after_ok:
            return True
        at = text.find(phrase, at + 1)
    return False


def resolve(value: Any, path: Sequence[str]) -> Iterator[Any]:
    """The values at `path`; a repeated field yields each element's."""
    if isinstance(value, list):
        for item in value:
            yield from resolve(item, path)
        return
    if not path:
        yield value
        return
    if isinstance(value, dict) and path[0] in value:
        yield from resolve(value[path[0]], path[1:])


def leaves(value: Any) -> Iterator[Any]:
    """Every scalar inside `value`: what a search over a whole struct looks at."""
    if isinstance(value, dict):
        for item in value.values():
            yield from leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from leaves(item)
    elif value is not None:
        yield value


def as_text(value: Any) -> str:
    """A JSON value as the query language sees it: `true`, `3` for 3.0."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
