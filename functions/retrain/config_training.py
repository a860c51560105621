"""The `[pipelines.<name>.training]` table: the machine (and its fallbacks), the training
code (a container image or Python packages) and which data a run trains on."""

from __future__ import annotations

import re
from collections.abc import Mapping

from retrain.config_table import Table
from retrain.config_values import (
    DATA_WINDOWS,
    STRATEGIES,
    DataWindow,
    Guards,
    Machine,
    PythonPackage,
    Training,
)


def parse_training(t: Table, guards: Guards) -> Training:
    machine = parse_machine(t, guards)
    replica_count = t.integer("replica_count", 1, minimum=1)
    if guards.max_replica_count is not None and replica_count > guards.max_replica_count:
        t.fail("replica_count", f"{replica_count} exceeds guards.max_replica_count")
    hp = t.table("hyperparameters")
    hyperparameters = {key: hp.scalar(key) for key in hp.names()}
    fallback = tuple(
        parse_machine(t.item("fallback", index), guards) for index in range(t.list_len("fallback"))
    )
    image_uri, package = _training_code(t)
    training = Training(
        image_uri=image_uri,
        package=package,
        machine=machine,
        args=t.str_list("args", ()),
        replica_count=replica_count,
        strategy=t.choice("strategy", STRATEGIES, "standard"),
        timeout_seconds=t.integer("timeout_seconds", 86400, minimum=60),
        service_account=t.opt_str("service_account"),
        fallback=fallback,
        hyperparameters=hyperparameters,
        data=_data_window(t),
    )
    t.done()
    return training


def _data_window(t: Table) -> DataWindow:
    """`data = "batch" | "all" | { days = N }`."""
    if not t.has("data"):
        return DataWindow()
    raw = t.raw("data")
    if isinstance(raw, str):
        if raw not in DATA_WINDOWS:
            t.fail("data", f'must be "batch", "all" or {{ days = N }}, not {raw!r}')
        return DataWindow(raw)
    if not isinstance(raw, Mapping):
        t.fail("data", f'must be "batch", "all" or {{ days = N }}, not {raw!r}')
    window = t.table("data")
    days = window.opt_int("days", minimum=1)
    window.done()  # an unknown key (a typo of "days") first
    if days is None:
        window.fail("days", "is required: the number of days of objects to train on")
    return DataWindow("days", days)


_PACKAGE_KEYS = ("executor_image_uri", "package_uris", "python_module")
# A dotted module name, as `python -m` takes it.
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _training_code(t: Table) -> tuple[str, PythonPackage | None]:
    """Exactly one of the two forms Vertex takes: a container image (`image_uri`), or
    Python packages on a prebuilt container (`executor_image_uri` + `package_uris` +
    `python_module`)."""
    given = [key for key in _PACKAGE_KEYS if t.has(key)]
    if t.has("image_uri"):
        if given:
            t.fail(
                given[0],
                "cannot be combined with image_uri: use either image_uri or "
                "executor_image_uri + package_uris + python_module",
            )
        return t.text("image_uri", required=True), None
    if not given:
        t.fail(
            "image_uri",
            "is required (or, for a Python package on a prebuilt container, "
            "executor_image_uri + package_uris + python_module)",
        )
    executor = t.text("executor_image_uri", required=True)
    uris = t.str_list("package_uris", ())
    if not uris:
        t.fail("package_uris", "must list at least one gs:// URI of a Python package")
    for uri in uris:
        bucket, _, path = uri.removeprefix("gs://").partition("/")
        if not uri.startswith("gs://") or not bucket or not path or path.endswith("/"):
            t.fail("package_uris", f"must hold gs://bucket/object URIs, not {uri!r}")
        if any(c.isspace() or not c.isprintable() for c in uri):
            t.fail("package_uris", f"{uri!r} holds whitespace or control characters")
    module = t.text("python_module", required=True)
    if not _MODULE.fullmatch(module):
        t.fail("python_module", f"must be a dotted Python module name, not {module!r}")
    return "", PythonPackage(executor, uris, module)


def parse_machine(t: Table, guards: Guards) -> Machine:
    machine_type = t.text("machine_type", required=True)
    if guards.allowed_machine_types and machine_type not in guards.allowed_machine_types:
        t.fail("machine_type", f"{machine_type!r} is not in guards.allowed_machine_types")
    accelerator_type = t.opt_str("accelerator_type")
    count = t.integer("accelerator_count", 1 if accelerator_type else 0, minimum=0)
    if accelerator_type:
        if guards.allowed_accelerators and accelerator_type not in guards.allowed_accelerators:
            t.fail(
                "accelerator_type", f"{accelerator_type!r} is not in guards.allowed_accelerators"
            )
        if count < 1:
            t.fail("accelerator_count", "must be at least 1 when accelerator_type is set")
    elif count:
        t.fail("accelerator_count", "is set but accelerator_type is not")
    if guards.max_accelerator_count is not None and count > guards.max_accelerator_count:
        t.fail("accelerator_count", f"{count} exceeds guards.max_accelerator_count")
    return Machine(machine_type, accelerator_type, count)
