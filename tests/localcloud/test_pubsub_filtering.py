"""The Pub/Sub filter language on its own: string literals, keys and operator rules that the
contract tests through the client do not spell out one by one."""

from __future__ import annotations

import pytest

from localcloud.pubsub import filtering
from localcloud.pubsub.errors import InvalidArgument


def matches(text: str, attributes: dict[str, str]) -> bool:
    predicate = filtering.parse(text)
    assert predicate is not None
    return predicate(attributes)


@pytest.mark.parametrize(
    ("text", "attributes", "expected"),
    [
        ('attributes.k = "a\\"b"', {"k": 'a"b'}, True),
        ('attributes.k = "line\\nbreak"', {"k": "line\nbreak"}, True),
        ('attributes.k = "\\x41\\u00e9\\101"', {"k": "AéA"}, True),
        ("attributes.k = 'single'", {"k": "single"}, True),
        ('attributes.my-key = "x"', {"my-key": "x"}, True),
        ('attributes."with space" = "x"', {"with space": "x"}, True),
        ('attributes:"a.b"', {"a.b": ""}, True),
        ('attributes.k = ""', {"k": ""}, True),
        ('attributes.k = ""', {}, False),
        ('hasPrefix(attributes.k, "")', {"k": "anything"}, True),
        ('hasPrefix(attributes.k, "")', {}, False),
        ("NOT NOT attributes:k", {"k": "v"}, True),
        ("-(attributes:a OR attributes:b)", {"c": "1"}, True),
        ("((attributes:a))", {"a": "1"}, True),
        ("attributes:a AND attributes:b AND attributes:c", {"a": "", "b": ""}, False),
        ("attributes:a OR attributes:b OR attributes:c", {"c": ""}, True),
        ('attributes:AND AND attributes.NOT = "OR"', {"AND": "", "NOT": "OR"}, True),
        ('attributes.k="v"', {"k": "v"}, True),
        ('attributes.K = "v"', {"k": "v"}, False),  # keys are case-sensitive
    ],
)
def test_the_filter_language_matches_as_documented(
    text: str, attributes: dict[str, str], expected: bool
) -> None:
    assert matches(text, attributes) is expected


@pytest.mark.parametrize("text", ["", "   "])
def test_an_empty_filter_lets_everything_through(text: str) -> None:
    assert filtering.parse(text) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("attributes:a and attributes:b", "expected the end of the filter, found 'and'"),
        ("not attributes:a", "found 'not'"),
        ("attributes.k", "expected '=' or '!='"),
        ('attributes.k == "v"', "expected a string literal after '='"),
        ('attributes.k = "\\q"', "unknown escape"),
        ('attributes.k = "\\x4"', "bad \\x escape"),
        ('hasPrefix(attributes.k "p")', "expected ','"),
        ('hasPrefix(attributes:k, "p")', "expected '.'"),
        ("attributes:a attributes:b", "expected the end of the filter"),
        ("attributes:", "expected an attribute key"),
        ("attributes:a @", "unexpected character '@'"),
        ("()", "found ')'"),
    ],
)
def test_invalid_filters_name_the_problem_and_where(text: str, problem: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        filtering.parse(text)

    assert str(refused.value).startswith("Invalid filter: ")
    assert problem in str(refused.value)
    assert "column" in str(refused.value)
