import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def fixture_path():
    """Path of a fixture file: tests/fixtures (committed copy) first, ../shared/fixtures otherwise."""

    def find(name: str) -> Path:
        for base in (FIXTURES, SHARED / "fixtures"):
            if (base / name).exists():
                return base / name
        pytest.fail(f"fixture {name} not found in tests/fixtures or ../shared/fixtures")

    return find
