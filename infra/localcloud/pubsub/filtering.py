"""The Pub/Sub subscription filter language, on message attributes.

    attributes:KEY                       the message has the attribute
    attributes.KEY = "VALUE"             ... with exactly this value
    attributes.KEY != "VALUE"            not (has it with this value): true when it is absent
    hasPrefix(attributes.KEY, "PREFIX")  has it, and its value starts with PREFIX
    NOT x, -x, x AND y, x OR y, (x)

A KEY is a word of letters, digits, `_` and `-`, or a string literal. AND and OR may not be
mixed without parentheses, as the real service requires. A filter is parsed once, when the
subscription is created (where an invalid one is refused), into a predicate that publishing
applies to each message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from localcloud.pubsub.errors import InvalidArgument

MAX_FILTER_BYTES = 256

Predicate = Callable[[Mapping[str, str]], bool]

_SYMBOLS = ("!=", "=", ":", ".", ",", "(", ")", "-")
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    '"': '"',
    "'": "'",
    "?": "?",
    "`": "`",
}


@dataclass(frozen=True)
class _Token:
    kind: str  # "word", "string", a symbol, or "end"
    text: str
    at: int  # 1-based column, as the real service reports positions


def _invalid(reason: str, at: int) -> InvalidArgument:
    return InvalidArgument(f"Invalid filter: {reason} at column {at}")


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char.isspace():
            i += 1
        elif char in "\"'":
            value, i_next = _string(text, i)
            out.append(_Token("string", value, i + 1))
            i = i_next
        elif char in _WORD_CHARS and char != "-":
            start = i
            while i < len(text) and text[i] in _WORD_CHARS:
                i += 1
            out.append(_Token("word", text[start:i], start + 1))
        else:
            symbol = next((s for s in _SYMBOLS if text.startswith(s, i)), None)
            if symbol is None:
                raise _invalid(f"unexpected character {char!r}", i + 1)
            out.append(_Token(symbol, symbol, i + 1))
            i += len(symbol)
    out.append(_Token("end", "", len(text) + 1))
    return out


def _string(text: str, start: int) -> tuple[str, int]:
    """The value of the string literal opening at `start`, and the index after it."""
    quote = text[start]
    chars: list[str] = []
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == quote:
            return "".join(chars), i + 1
        if char != "\\":
            chars.append(char)
            i += 1
            continue
        escape = text[i + 1 : i + 2]
        if escape in _SIMPLE_ESCAPES:
            chars.append(_SIMPLE_ESCAPES[escape])
            i += 2
        elif escape in ("x", "u", "U"):
            width = {"x": 2, "u": 4, "U": 8}[escape]
            digits = text[i + 2 : i + 2 + width]
            if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise _invalid(f"bad \\{escape} escape in a string literal", i + 1)
            chars.append(chr(int(digits, 16)))
            i += 2 + width
        elif escape and escape in "01234567":
            digits = text[i + 1 : i + 4]
            if len(digits) != 3 or not all(c in "01234567" for c in digits):
                raise _invalid("bad octal escape in a string literal", i + 1)
            chars.append(chr(int(digits, 8)))
            i += 4
        else:
            raise _invalid(f"unknown escape \\{escape} in a string literal", i + 1)
    raise _invalid("unterminated string literal", start + 1)


class _Parser:
    """Recursive descent over the tokens; each rule returns a predicate."""

    def __init__(self, text: str) -> None:
        self._tokens = _tokens(text)
        self._i = 0

    def parse(self) -> Predicate:
        predicate = self._expression()
        self._expect("end", "the end of the filter")
        return predicate

    def _peek(self) -> _Token:
        return self._tokens[self._i]

    def _take(self) -> _Token:
        token = self._tokens[self._i]
        self._i += 1
        return token

    def _expect(self, kind: str, what: str) -> _Token:
        token = self._take()
        if token.kind != kind:
            found = "the end of the filter" if token.kind == "end" else repr(token.text)
            raise _invalid(f"expected {what}, found {found}", token.at)
        return token

    def _is_word(self, token: _Token, *words: str) -> bool:
        return token.kind == "word" and token.text in words

    def _expression(self) -> Predicate:
        terms = [self._unary()]
        operator = None
        while self._is_word(self._peek(), "AND", "OR"):
            token = self._take()
            if operator is not None and token.text != operator:
                raise _invalid("AND and OR must not be combined without parentheses", token.at)
            operator = token.text
            terms.append(self._unary())
        if len(terms) == 1:
            return terms[0]
        if operator == "AND":
            return lambda attributes: all(term(attributes) for term in terms)
        return lambda attributes: any(term(attributes) for term in terms)

    def _unary(self) -> Predicate:
        token = self._peek()
        if self._is_word(token, "NOT") or token.kind == "-":
            self._take()
            inner = self._unary()
            return lambda attributes: not inner(attributes)
        return self._primary()

    def _primary(self) -> Predicate:
        token = self._take()
        if token.kind == "(":
            inner = self._expression()
            self._expect(")", "')'")
            return inner
        if self._is_word(token, "hasPrefix"):
            return self._has_prefix()
        if self._is_word(token, "attributes"):
            return self._comparison()
        found = "the end of the filter" if token.kind == "end" else repr(token.text)
        raise _invalid(f"expected 'attributes', 'hasPrefix', 'NOT' or '(', found {found}", token.at)

    def _has_prefix(self) -> Predicate:
        self._expect("(", "'(' after hasPrefix")
        word = self._take()
        if not self._is_word(word, "attributes"):
            raise _invalid("hasPrefix takes attributes.KEY as its first argument", word.at)
        self._expect(".", "'.' after attributes")
        key = self._key()
        self._expect(",", "',' between the arguments of hasPrefix")
        prefix = self._expect("string", "a string literal as the prefix").text
        self._expect(")", "')' after the arguments of hasPrefix")

        def has_prefix(attributes: Mapping[str, str]) -> bool:
            value = attributes.get(key)
            return value is not None and value.startswith(prefix)

        return has_prefix

    def _comparison(self) -> Predicate:
        token = self._take()
        if token.kind == ":":
            key = self._key()
            return lambda attributes: key in attributes
        if token.kind != ".":
            raise _invalid("expected ':' or '.' after attributes", token.at)
        key = self._key()
        operator = self._take()
        if operator.kind not in ("=", "!="):
            raise _invalid(f"expected '=' or '!=' after attributes.{key}", operator.at)
        value = self._expect("string", f"a string literal after '{operator.kind}'").text
        if operator.kind == "=":
            return lambda attributes: attributes.get(key) == value
        return lambda attributes: attributes.get(key) != value

    def _key(self) -> str:
        token = self._take()
        if token.kind not in ("word", "string"):
            raise _invalid("expected an attribute key (a word or a string literal)", token.at)
        return token.text


def parse(text: str) -> Predicate | None:
    """The predicate of a subscription's filter; None for the empty filter (everything)."""
    if len(text.encode("utf-8")) > MAX_FILTER_BYTES:
        raise InvalidArgument(
            f"Invalid filter: it is {len(text.encode('utf-8'))} bytes long; "
            f"at most {MAX_FILTER_BYTES} are allowed"
        )
    if not text.strip():
        return None
    return _Parser(text).parse()
