"""Container images as local commands: localcloud has no container engine, so an image URI
maps to the argv that does locally what the image's entrypoint does in the cloud."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from localcloud.errors import LocalCloudError

IMAGE_MAP_ENV = "LOCALCLOUD_IMAGE_MAP"

# The project's own images, recognised by name whatever registry or tag they carry.
_DEFAULT_MODULES = (("trainer", "trainer.task"), ("serving", "trainer.serving"))

# A container command starting with a bare Python interpreter means "the image's Python";
# locally that is the interpreter localcloud runs on, which has the project installed.
_PYTHON_NAME = re.compile(r"^python(\d+(\.\d+)?)?$")


class UnmappedImage(LocalCloudError):
    """An image URI that no local command stands for."""

    def __init__(self, image_uri: str) -> None:
        super().__init__(
            f"no local command for image '{image_uri}': map it with {IMAGE_MAP_ENV}"
            ' (JSON: {"<image URI or glob>": ["program", "arg", ...]})'
        )
        self.image_uri = image_uri


def image_name(image_uri: str) -> str:
    """`us-docker.pkg.dev/p/repo/trainer:latest` -> `trainer` (digest or tag dropped)."""
    last = image_uri.rstrip("/").rsplit("/", 1)[-1]
    return last.split("@", 1)[0].split(":", 1)[0]


@dataclass(frozen=True)
class ImageCommands:
    """Image URI -> argv prefix. `extra` (exact URI or glob -> argv) wins over the defaults
    for the project's own `trainer*` and `serving*` images."""

    extra: Mapping[str, Sequence[str]] = field(default_factory=dict)
    python: str = sys.executable

    @classmethod
    def from_json(cls, text: str, *, source: str = IMAGE_MAP_ENV) -> ImageCommands:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise LocalCloudError(f"{source} is not valid JSON: {err}") from err
        if not isinstance(raw, dict):
            raise LocalCloudError(f'{source} must be a JSON object: {{"<image>": ["argv", ...]}}')
        extra: dict[str, tuple[str, ...]] = {}
        for pattern, argv in raw.items():
            if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
                raise LocalCloudError(
                    f"{source}: the command for '{pattern}' must be a non-empty list of strings"
                )
            extra[pattern] = tuple(argv)
        return cls(extra=extra)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ImageCommands:
        text = environ.get(IMAGE_MAP_ENV, "").strip()
        return cls.from_json(text) if text else cls()

    def default_command(self, image_uri: str) -> list[str]:
        """The argv an image runs when the container spec sets no command."""
        if image_uri in self.extra:
            return list(self.extra[image_uri])
        for pattern, argv in self.extra.items():
            if fnmatch.fnmatchcase(image_uri, pattern):
                return list(argv)
        name = image_name(image_uri)
        for prefix, module in _DEFAULT_MODULES:
            if name.startswith(prefix):
                return [self.python, "-m", module]
        raise UnmappedImage(image_uri)

    def argv(self, image_uri: str, command: Sequence[str], args: Sequence[str]) -> list[str]:
        """As on Vertex: a container `command` replaces the image's own, `args` follow."""
        if command:
            head = [self.python] if _PYTHON_NAME.match(command[0]) else [command[0]]
            return [*head, *command[1:], *args]
        return [*self.default_command(image_uri), *args]
