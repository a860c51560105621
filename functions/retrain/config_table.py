"""Reading one TOML table of the pipelines config: typed getters whose errors name the
file and the dotted key, and a check that no key was left unread (a typo is an error)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from retrain.errors import ConfigError


class Table:
    """One TOML table being read, remembering its dotted path and which keys were used."""

    def __init__(self, data: Any, path: str, source: str):
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: {path or 'document'} must be a table")
        self._data = data
        self._path = path
        self._source = source
        self._used: set[str] = set()

    def fail(self, key: str, problem: str) -> None:
        where = ".".join(p for p in (self._path, key) if p) or "document"
        raise ConfigError(f"{self._source}: {where}: {problem}")

    def names(self) -> list[str]:
        self._used.update(self._data)
        return list(self._data)

    def has(self, key: str) -> bool:
        return key in self._data

    def done(self) -> None:
        unknown = sorted(set(self._data) - self._used)
        if unknown:
            self.fail(unknown[0], "unknown key")

    def _get(self, key: str, required: bool) -> Any:
        self._used.add(key)
        if key not in self._data:
            if required:
                self.fail(key, "is required")
            return None
        return self._data[key]

    def raw(self, key: str) -> Any:
        """The value as written, marked used (for keys that take several shapes)."""
        return self._get(key, False)

    def table(self, key: str, *, required: bool = False) -> Table:
        value = self._get(key, required)
        sub = f"{self._path}.{key}" if self._path else key
        return Table({} if value is None else value, sub, self._source)

    def list_len(self, key: str) -> int:
        value = self._get(key, False)
        if value is None:
            return 0
        if not isinstance(value, list):
            self.fail(key, "must be a list")
        return len(value)

    def item(self, key: str, index: int) -> Table:
        return Table(self._data[key][index], f"{self._path}.{key}[{index}]", self._source)

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> str:
        value = self._get(key, required)
        if value is None:
            return default if default is not None else ""
        if not isinstance(value, str) or (required and not value):
            self.fail(key, "must be a non-empty string" if required else "must be a string")
        return str(value)

    def opt_str(self, key: str) -> str | None:
        value = self._get(key, False)
        if value is not None and not isinstance(value, str):
            self.fail(key, "must be a string")
        return value or None

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.text(key, default)
        if value not in choices:
            self.fail(key, f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def integer(
        self, key: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = self.opt_int(key, minimum=minimum, maximum=maximum)
        return default if value is None else value

    def opt_int(
        self, key: str, *, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        value = self._get(key, False)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, "must be an integer")
        if minimum is not None and value < minimum:
            self.fail(key, f"must be at least {minimum}")
        if maximum is not None and value > maximum:
            self.fail(key, f"must be at most {maximum}")
        return int(value)

    def opt_float(self, key: str) -> float | None:
        value = self._get(key, False)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(key, "must be a number")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(key, "must be true or false")
        return bool(value)

    def str_list(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(key, False)
        if value is None:
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(key, "must be a list of strings")
        return tuple(value)

    def bound(self, key: str, *, integer: bool) -> float:
        """A required finite number (an integer when `integer`): a range's end."""
        value = self._get(key, True)
        if integer and (isinstance(value, bool) or not isinstance(value, int)):
            self.fail(key, "must be an integer for an integer parameter")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            self.fail(key, "must be a finite number")
        return float(value)

    def values(self, key: str, *, numbers: bool) -> tuple[Any, ...]:
        """A non-empty list of distinct values: finite numbers (sorted, as Vertex wants
        discrete values) or non-empty strings."""
        value = self._get(key, True)
        what = "finite numbers" if numbers else "non-empty strings"
        if not isinstance(value, list) or not value:
            self.fail(key, f"must be a non-empty list of {what}")
        for item in value:
            if numbers:
                good = (
                    isinstance(item, int | float)
                    and not isinstance(item, bool)
                    and math.isfinite(item)
                )
            else:
                good = isinstance(item, str) and bool(item)
            if not good:
                self.fail(key, f"must be a list of {what}, not {item!r}")
        if len(set(value)) != len(value):
            self.fail(key, "must not repeat a value")
        return tuple(sorted(value)) if numbers else tuple(value)

    def scalar(self, key: str) -> Any:
        value = self._get(key, True)
        if isinstance(value, Mapping | list):
            self.fail(key, "must be a string, number or boolean")
        return value
