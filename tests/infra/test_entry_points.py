"""Each CloudEvent entry point of functions/main.py is deployed, and nothing else is."""

from __future__ import annotations

from tests.infra.terraform import FUNCTIONS_DIR, Module, cloud_event_entry_points
from tests.infra.test_functions import functions_by_entry_point


def test_every_cloud_event_entry_point_is_deployed_and_nothing_else(module: Module) -> None:
    main = FUNCTIONS_DIR / "main.py"
    declared = cloud_event_entry_points(main)
    assert declared, f"no @functions_framework.cloud_event function in {main}"
    assert set(functions_by_entry_point(module)) == declared
