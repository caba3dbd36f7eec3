"""The bundle's ``large_files.yml`` (or ``.yaml`` / ``.json``, as the zoo accepts): files the bundle
uses but does not ship, each with its public ``url``, ``hash_val`` and ``hash_type``; MONAI's
``download_large_files`` and ``tools.zoo.fetch`` both read it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

NAMES = ("large_files.yml", "large_files.yaml", "large_files.json")


def large_files_path(bundle_root: str | Path) -> Path:
    found = [Path(bundle_root) / name for name in NAMES if (Path(bundle_root) / name).is_file()]
    if len(found) != 1:
        raise FileNotFoundError(f"{bundle_root} must hold exactly one of {NAMES}; found {[p.name for p in found]}")
    return found[0]


def read_large_files(bundle_root: str | Path) -> list[dict]:
    """The entries, each checked to have a path inside the bundle, a URL and a hash."""
    path = large_files_path(bundle_root)
    if path.suffix == ".json":
        content = json.loads(path.read_text())
    else:
        import yaml

        content = yaml.safe_load(path.read_text())
    entries = (content or {}).get("large_files") or []
    for entry in entries:
        missing = [key for key in ("path", "url", "hash_val", "hash_type") if not entry.get(key)]
        if missing:
            raise ValueError(f"{path.name}: entry {entry} lacks {missing}")
        target_path(bundle_root, entry["path"])  # refuses a path outside the bundle
    return entries


def target_path(bundle_root: str | Path, relative: str) -> Path:
    root = Path(bundle_root).resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root) or target == root:
        raise ValueError(f"large file path {relative!r} leaves the bundle folder")
    return target


def file_hash(path: str | Path, hash_type: str = "sha256") -> str:
    digest = hashlib.new(hash_type)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
