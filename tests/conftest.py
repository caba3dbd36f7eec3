"""The code under test is this checkout's.

`make setup` installs the repository editable (pyproject.toml), so the bundle's `scripts` and the
repository's `tools` import without sys.path edits. A .venv shared by several checkouts imports them
from the checkout installed last: stop, rather than test another checkout's code.
"""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"scripts": REPO / "bundle" / "scripts", "tools": REPO / "tools"}


def pytest_configure(config):
    for name, folder in PACKAGES.items():
        spec = importlib.util.find_spec(name)
        found = Path(spec.origin).resolve().parent if spec and spec.origin else None
        if found != folder:
            raise pytest.UsageError(
                f"`{name}` imports from {found or 'nowhere'}, not from this checkout's {folder}: run `make setup` "
                f"(it installs this checkout), or set PYTHONPATH={REPO / 'bundle'}:{REPO}")
