"""The SD-FSMIS MONAI Label app's tasks.

Importing this package puts the repository's ``bundle/`` folder on ``sys.path`` (found from this
file's own location), so the bundle's ``scripts`` package imports as it does in the MONAI bundle.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundle"
if str(BUNDLE) not in sys.path:
    sys.path.insert(0, str(BUNDLE))
