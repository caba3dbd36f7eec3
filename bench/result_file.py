"""Where a bench script's markdown result goes: printed, and written to ``<out>/<stem>_<date>.md``
(``bench/results/`` by default), one file per kind and day."""

from __future__ import annotations

import datetime
from pathlib import Path


def publish(text: str, out_dir, stem: str) -> Path:
    print(text)
    out = Path(out_dir) / f"{stem}_{datetime.date.today().isoformat()}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out
