"""Reading the Terraform module offline: python-hcl2 parses it, these helpers query it.

Strings come back without their quotes; an expression comes back as `${...}`, so a literal
and a reference are told apart by that wrapper. Blocks are lists of dicts.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hcl2

REPO_ROOT = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = REPO_ROOT / "infra" / "terraform"
FUNCTIONS_DIR = REPO_ROOT / "functions"

OPTIONS = hcl2.SerializationOptions(
    with_comments=False,
    strip_string_quotes=True,
    explicit_blocks=False,
    preserve_heredocs=False,
)

_WHOLE_EXPRESSION = re.compile(r"^\$\{(?P<inner>.*)\}$", re.S)


def load_hcl(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        return hcl2.load(handle, serialization_options=OPTIONS)


def expression(value: Any) -> str | None:
    """The expression inside `${...}` when the whole value is one, else None."""
    if not isinstance(value, str):
        return None
    match = _WHOLE_EXPRESSION.match(value)
    return match.group("inner").strip() if match else None


def block(body: dict[str, Any], name: str) -> dict[str, Any]:
    """The single nested block `name` of a resource body (KeyError names the block)."""
    blocks = body.get(name)
    if not isinstance(blocks, list) or len(blocks) != 1:
        raise KeyError(f"expected exactly one {name!r} block, found {blocks!r}")
    found: dict[str, Any] = blocks[0]
    return found


def dynamic_block(body: dict[str, Any], name: str) -> dict[str, Any]:
    for entry in body.get("dynamic", []):
        if name in entry:
            found: dict[str, Any] = entry[name]
            return found
    raise KeyError(f"no dynamic {name!r} block")


@dataclass(frozen=True)
class Module:
    """Every top-level block of the module, merged across its .tf files."""

    resources: dict[str, dict[str, dict[str, Any]]]
    data: dict[str, dict[str, dict[str, Any]]]
    locals: dict[str, Any]
    variables: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, directory: Path) -> Module:
        resources: dict[str, dict[str, dict[str, Any]]] = {}
        data: dict[str, dict[str, dict[str, Any]]] = {}
        locals_: dict[str, Any] = {}
        variables: dict[str, dict[str, Any]] = {}
        outputs: dict[str, dict[str, Any]] = {}
        for path in sorted(directory.glob("*.tf")):
            parsed = load_hcl(path)
            for kind, target in (("resource", resources), ("data", data)):
                for entry in parsed.get(kind, []):
                    for type_, named in entry.items():
                        for name, body in named.items():
                            existing = target.setdefault(type_, {})
                            assert name not in existing, f"{type_}.{name} declared twice"
                            existing[name] = body
            for entry in parsed.get("locals", []):
                locals_.update(entry)
            for entry in parsed.get("variable", []):
                variables.update(entry)
            for entry in parsed.get("output", []):
                outputs.update(entry)
        return cls(resources, data, locals_, variables, outputs)

    def of_type(self, type_: str) -> dict[str, dict[str, Any]]:
        return self.resources.get(type_, {})

    def resource(self, address: str) -> dict[str, Any]:
        type_, name = address.split(".")
        return self.resources[type_][name]

    def resolve(self, value: Any) -> Any:
        """Follows `${local.NAME}` to the local's value; anything else comes back as is."""
        inner = expression(value)
        if inner is not None and re.fullmatch(r"local\.\w+", inner):
            return self.resolve(self.locals[inner.removeprefix("local.")])
        return value

    def instances(self, address: str, *, symbolic: bool = False) -> dict[str, dict[str, Any]]:
        """The instances of a resource, keyed like Terraform's: `each.key` and `each.value.*`
        are replaced by their values where `for_each` iterates a literal local (a map, or a
        list under toset); a resource without for_each or count has the one key "".

        With `symbolic`, a resource repeated over something only known at plan time (a
        variable, a count) comes back once, under the key "*", unexpanded."""
        body = self.resource(address)
        for_each = expression(body.get("for_each"))
        if for_each is None:
            if "count" in body:
                assert symbolic, f"{address} uses count"
                return {"*": body}
            return {"": body}
        listed = re.fullmatch(r"toset\((local\.\w+)\)", for_each)
        source = self.resolve("${" + (listed.group(1) if listed else for_each) + "}")
        if symbolic and not isinstance(source, dict | list):
            return {"*": body}
        assert isinstance(source, dict | list), f"{address}: for_each is not a literal: {source!r}"
        items = source.items() if isinstance(source, dict) else ((key, key) for key in source)
        return {key: _substitute(body, key, value) for key, value in items}

    def iter_resources(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for type_, named in self.resources.items():
            for name, body in named.items():
                yield type_, name, body


def string_tuple(path: Path, name: str) -> tuple[str, ...]:
    """A module-level `NAME = ("A", "B")` read from source without importing the module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == name for target in node.targets
        ):
            value = ast.literal_eval(node.value)
            assert isinstance(value, tuple) and all(isinstance(item, str) for item in value)
            return value
    raise LookupError(f"{name} is not assigned at module level in {path}")


def cloud_event_entry_points(path: Path) -> set[str]:
    """Top-level functions of `path` decorated with `functions_framework.cloud_event`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
            ast.unparse(decorator) in ("functions_framework.cloud_event", "cloud_event")
            for decorator in node.decorator_list
        ):
            found.add(node.name)
    return found


def _substitute(value: Any, key: str, each_value: Any) -> Any:
    if isinstance(value, dict):
        return {name: _substitute(item, key, each_value) for name, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, key, each_value) for item in value]
    if not isinstance(value, str):
        return value

    def literal(match: re.Match[str]) -> str:
        field = match.group("field")
        if field is None:
            return f'"{key}"'
        assert isinstance(each_value, dict), f"each.value.{field} of a non-object"
        return f'"{each_value[field]}"'

    text = re.sub(r"each\.(?:key\b|value\.(?P<field>\w+))", literal, value)
    # `${"x"}` (an interpolated literal) is just x.
    return re.sub(r'\$\{"([^"$]*)"\}', r"\1", text)


def references(text: Any, type_: str) -> list[tuple[str, str]]:
    """Every `TYPE.NAME` or `TYPE.NAME["KEY"]` in an expression, as (NAME, KEY or "")."""
    if not isinstance(text, str):
        return []
    pattern = re.escape(type_) + r'\.(\w+)(?:\["([^"]+)"\])?'
    return [(name, key) for name, key in re.findall(pattern, text)]


def reference(text: Any, type_: str) -> tuple[str, str]:
    """The one `TYPE.NAME[...]` an expression refers to (AssertionError otherwise)."""
    found = references(text, type_)
    assert len(found) == 1, f"expected one reference to a {type_} in {text!r}, found {found}"
    return found[0]
