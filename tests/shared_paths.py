"""Where ../shared lives (data and weights that are never committed), and a skip when it does not."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SDFSMIS_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the workplace's shared data/weights (set SDFSMIS_SHARED)")
    return path
