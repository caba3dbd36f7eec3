"""Package the bundle as the model zoo publishes each version: ``sd_fsmis_fewshot_v<version>.zip``
holding the bundle folder under its zoo name, without the large files (``large_files.yml`` fetches
them) and without what runs leave behind (runs/, eval/, logs/, weights/, caches, hidden files,
exported TorchScript).

    .venv/bin/python -m tools.zoo.package --out dist      # from the repository root
    # the same bundle whose large_files.yml points at a mirror of the same files (same sha256):
    .venv/bin/python -m tools.zoo.package --out dist --large_files_mirror http://host/path/

As the zoo's ``compress_bundle`` (files dated 2022-05-30, no directory entries, deflate level 9)
the archive is reproducible: the same tree gives the same bytes. A file over the zoo's 25 MB limit
that is not a large file stops the packaging.
"""

from __future__ import annotations

import argparse
import json
import os
import zipfile
from pathlib import Path

from . import BUNDLE_NAME
from .large_files import large_files_path, read_large_files

MAX_FILE_BYTES = 25 * 1024 * 1024
ZIP_DATE = (2022, 5, 30, 0, 0, 0)
SKIP_DIRS = {"runs", "eval", "logs", "weights", "__pycache__", "cache", "outputs"}
SKIP_SUFFIXES = {".pyc", ".tmp", ".ckpt", ".ts"}  # .ts: ckpt_export makes it from model.pt where it is used
BUNDLE_ROOT = Path(__file__).resolve().parents[2] / "bundle"  # tools/zoo/package.py -> <repo>/bundle


def bundle_version(bundle_root: str | Path) -> str:
    return json.loads((Path(bundle_root) / "configs" / "metadata.json").read_text())["version"]


def zip_name(version: str, name: str = BUNDLE_NAME) -> str:
    return f"{name}_v{version}.zip"


def bundle_files(bundle_root: str | Path) -> list[str]:
    """Relative POSIX paths of what ships, sorted; raises on a file over the size limit."""
    root = Path(bundle_root)
    large = {entry["path"] for entry in read_large_files(root)}
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        for name in names:
            path = Path(folder, name)
            relative = path.relative_to(root).as_posix()
            if name.startswith(".") or path.suffix in SKIP_SUFFIXES or relative in large:
                continue
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ValueError(f"{relative} is {path.stat().st_size / 2**20:.1f} MB, over the zoo's 25 MB limit: "
                                 "list it in large_files.yml (public URL + sha256) instead of shipping it")
            files.append(relative)
    return sorted(files)


def mirrored_large_files(bundle_root: str | Path, mirror: str) -> str:
    """The large-files list with every URL replaced by ``<mirror>/<path>``; comments and hashes kept."""
    text = large_files_path(bundle_root).read_text()
    for entry in read_large_files(bundle_root):
        text = text.replace(entry["url"], f"{mirror.rstrip('/')}/{entry['path']}")
    return text


def package(bundle_root: str | Path = BUNDLE_ROOT, out_dir: str | Path = ".", name: str = BUNDLE_NAME,
            large_files_mirror: str | None = None) -> Path:
    """Write ``<out_dir>/<name>_v<version>.zip``; return its path (written whole or not at all)."""
    root = Path(bundle_root)
    target = Path(out_dir) / zip_name(bundle_version(root), name)
    target.parent.mkdir(parents=True, exist_ok=True)
    large_name = large_files_path(root).name
    files = bundle_files(root)
    partial = target.with_suffix(".zip.tmp")
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
            for relative in files:
                info = zipfile.ZipInfo(f"{name}/{relative}", ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = ((root / relative).stat().st_mode & 0o777 | 0o100000) << 16
                if large_files_mirror and relative == large_name:
                    data = mirrored_large_files(root, large_files_mirror).encode()
                else:
                    data = (root / relative).read_bytes()
                archive.writestr(info, data, compresslevel=9)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=".", help="folder for the zip")
    parser.add_argument("--bundle_root", default=str(BUNDLE_ROOT), help="the bundle folder to package")
    parser.add_argument("--name", default=BUNDLE_NAME, help="the zoo's name: zip name and its top folder")
    parser.add_argument("--large_files_mirror", default=None,
                        help="base URL serving the large files under their paths (e.g. a local mirror)")
    args = parser.parse_args(argv)
    target = package(args.bundle_root, args.out, args.name, args.large_files_mirror)
    with zipfile.ZipFile(target) as archive:
        for info in archive.infolist():
            print(f"{info.file_size:>10}  {info.filename}")
        print(f"{target}: {target.stat().st_size} bytes, {len(archive.infolist())} files")
    return target


if __name__ == "__main__":
    main()
