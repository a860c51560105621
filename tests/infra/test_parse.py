"""Every Terraform file of the module parses (python-hcl2), as do the example variables."""

from __future__ import annotations

from pathlib import Path

import hcl2
import pytest

from tests.infra.terraform import TERRAFORM_DIR, Module, load_hcl

TF_FILES = sorted(TERRAFORM_DIR.glob("*.tf"))


def test_module_has_terraform_files() -> None:
    names = {path.name for path in TF_FILES}
    assert {"versions.tf", "variables.tf", "outputs.tf"} <= names


@pytest.mark.parametrize("path", TF_FILES, ids=lambda path: path.name)
def test_tf_file_parses(path: Path) -> None:
    with path.open(encoding="utf-8") as handle:
        parsed = hcl2.load(handle)
    assert parsed, f"{path.name} is empty"


def test_example_tfvars_set_every_required_variable(module: Module) -> None:
    example = load_hcl(TERRAFORM_DIR / "terraform.tfvars.example")
    required = {name for name, spec in module.variables.items() if "default" not in spec}
    assert required - set(example) == set(), "terraform.tfvars.example lacks these"
    assert set(example) - set(module.variables) == set(), "undeclared variables in the example"
