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

# Google's prebuilt containers, in every regional mirror (`us-`, `europe-`, `asia-docker`)
# and the older gcr.io paths. Training images whose framework the local interpreter has
# (PyTorch, scikit-learn, XGBoost) run python_package_spec with it.
_PREBUILT_TRAINING = re.compile(
    r"^(?:[a-z0-9-]*docker\.pkg\.dev/vertex-ai|(?:[a-z]+\.)?gcr\.io/cloud-aiplatform)"
    r"/training/(?:pytorch|sklearn|scikit-learn|xgboost)-[a-z0-9]+\.[^/]+$"
)
# Prebuilt serving images that localcloud.prebuilt_serving stands in for: scikit-learn and
# XGBoost models served from model.joblib, model.pkl or model.bst.
_PREBUILT_SERVING = re.compile(
    r"^(?:[a-z0-9-]*docker\.pkg\.dev/vertex-ai|(?:[a-z]+\.)?gcr\.io/cloud-aiplatform)"
    r"/prediction/(?:sklearn|xgboost)-cpu\.[^/]+$"
)
PREBUILT_SERVING_MODULE = "localcloud.prebuilt_serving"

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


class UnmappedExecutor(LocalCloudError):
    """A python_package_spec executor image that no local interpreter stands for."""

    def __init__(self, image_uri: str) -> None:
        super().__init__(
            f"no local Python for executor image '{image_uri}': localcloud runs Google's"
            " prebuilt PyTorch, scikit-learn and XGBoost training images"
            " (us-docker.pkg.dev/vertex-ai/training/...) with its own interpreter; map any"
            f' other with {IMAGE_MAP_ENV} (JSON: {{"<image URI or glob>": ["/path/to/python"]}})'
        )
        self.image_uri = image_uri


def is_prebuilt_training(image_uri: str) -> bool:
    return _PREBUILT_TRAINING.match(image_uri) is not None


def is_prebuilt_serving(image_uri: str) -> bool:
    return _PREBUILT_SERVING.match(image_uri) is not None


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

    def _mapped(self, image_uri: str) -> list[str] | None:
        if image_uri in self.extra:
            return list(self.extra[image_uri])
        for pattern, argv in self.extra.items():
            if fnmatch.fnmatchcase(image_uri, pattern):
                return list(argv)
        return None

    def executor_python(self, image_uri: str) -> str:
        """The interpreter that runs a python_package_spec on `image_uri`: the program of
        its mapping, or localcloud's own for Google's prebuilt PyTorch, scikit-learn and
        XGBoost training images (the frameworks this environment holds)."""
        mapped = self._mapped(image_uri)
        if mapped is not None:
            return mapped[0]
        if is_prebuilt_training(image_uri):
            return self.python
        raise UnmappedExecutor(image_uri)

    def default_command(self, image_uri: str) -> list[str]:
        """The argv an image runs when the container spec sets no command."""
        mapped = self._mapped(image_uri)
        if mapped is not None:
            return mapped
        if is_prebuilt_serving(image_uri):
            return [self.python, "-m", PREBUILT_SERVING_MODULE]
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
