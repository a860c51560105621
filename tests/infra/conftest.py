from __future__ import annotations

import pytest

from tests.infra.terraform import TERRAFORM_DIR, Module


@pytest.fixture(scope="session")
def module() -> Module:
    return Module.load(TERRAFORM_DIR)
