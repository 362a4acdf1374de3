"""Shared fixtures: the tiny trained model (built once per session) and the reference fixture path."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE_FIXTURE = REPO.parent / "shared" / "fixtures" / "deepsdf_reference"


@pytest.fixture(scope="session")
def tiny_model():
    from tests.analytic import train_tiny_model

    return train_tiny_model()


@pytest.fixture(scope="session")
def tiny_model_file(tiny_model, tmp_path_factory):
    from engine.model import save_model

    return save_model(tiny_model, tmp_path_factory.mktemp("model") / "tiny.dsdf")


@pytest.fixture(scope="session")
def reference_fixture() -> Path:
    if not (REFERENCE_FIXTURE / "experiment" / "specs.json").is_file():
        pytest.skip(f"reference fixture not found at {REFERENCE_FIXTURE} (it lives in ../shared beside the repo)")
    return REFERENCE_FIXTURE
