"""The SD-FSMIS MONAI Label app's tasks.

``REPO`` and ``BUNDLE`` locate the repository the app belongs to (the shipped checkpoint, the
training workflow). The bundle's ``scripts`` package imports through the repository's editable
install (``make setup``, pyproject.toml); MONAI Label puts the app folder on ``sys.path`` for ``lib``.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundle"
