"""A checked download of the bundle and of its large files: all of it in place, or nothing.

MONAI's own commands are the zoo user's path (``python -m monai.bundle download``, then
``download_large_files``); they check each large file's hash, but a zip of another version is
extracted as it is, and a failure part-way through the large files leaves the earlier ones behind.
This does the same work in a temporary folder beside the target and moves it into place only once
everything is checked; otherwise it raises ``FetchError`` saying what and where, and leaves no trace.

    python -m tools.zoo.fetch bundle --url <zip URL or path> --bundle_dir <dir> [--version 0.4.1] [--sha256 <hash>]
    python -m tools.zoo.fetch large_files --bundle_path <dir>/sd_fsmis_fewshot
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from . import BUNDLE_NAME
from .large_files import file_hash, read_large_files, target_path


class FetchError(RuntimeError):
    """A download that does not match what was asked for; nothing was written."""


def _download(url: str, target: Path) -> None:
    """``url`` (http(s), file:// or a local path) to ``target``; a clear error where it cannot."""
    source = url if "://" in url else Path(url).resolve().as_uri()
    try:
        with urllib.request.urlopen(source, timeout=60) as response, open(target, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise FetchError(f"cannot download {url}: {error}") from None


def fetch_bundle(url: str, bundle_dir: str | Path, name: str = BUNDLE_NAME, version: str | None = None,
                 sha256: str | None = None) -> Path:
    """Download a bundle zip and extract it as ``<bundle_dir>/<name>``, after checking the archive's
    hash (if given), that everything in it lies under ``<name>/`` and that its metadata.json has
    ``version`` (if given). Returns the bundle folder."""
    bundle_dir = Path(bundle_dir)
    target = bundle_dir / name
    if target.exists():
        raise FetchError(f"{target} already exists: remove it, or fetch into another bundle_dir")
    bundle_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.fetch-", dir=bundle_dir))
    try:
        archive_path = staging / f"{name}.zip"
        _download(url, archive_path)
        if sha256 and file_hash(archive_path) != sha256:
            raise FetchError(f"{url}: sha256 {file_hash(archive_path)} is not the expected {sha256}")
        try:
            archive = zipfile.ZipFile(archive_path)
        except zipfile.BadZipFile:
            raise FetchError(f"{url} is not a zip archive") from None
        with archive:
            _check_members(archive, name, url)
            found = _archive_version(archive, name, url)
            if version is not None and found != version:
                raise FetchError(f"{url} holds {name} version {found}, not the requested {version}; "
                                 "nothing was extracted")
            archive.extractall(staging / "extracted")
        (staging / "extracted" / name).rename(target)  # same file system: all at once
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _check_members(archive: zipfile.ZipFile, name: str, url: str) -> None:
    for member in archive.namelist():
        parts = PurePosixPath(member).parts
        if PurePosixPath(member).is_absolute() or ".." in parts or "\\" in member:
            raise FetchError(f"{url}: unsafe path {member!r} in the archive")
        if parts[0] != name:
            raise FetchError(f"{url}: {member!r} is not under the bundle folder {name}/ (is this the {name} bundle?)")


def _archive_version(archive: zipfile.ZipFile, name: str, url: str) -> str:
    try:
        return json.loads(archive.read(f"{name}/configs/metadata.json"))["version"]
    except KeyError:
        raise FetchError(f"{url}: no {name}/configs/metadata.json with a version in the archive") from None


def fetch_large_files(bundle_path: str | Path) -> list[Path]:
    """Download every file of the bundle's large-files list that is not there yet, check each one's
    hash, and move them into place only when all are good. Returns the files now in place."""
    bundle_path = Path(bundle_path)
    entries = read_large_files(bundle_path)
    staging = Path(tempfile.mkdtemp(prefix=".large_files.fetch-", dir=bundle_path))
    problems, ready = [], []
    try:
        for index, entry in enumerate(entries):
            target = target_path(bundle_path, entry["path"])
            expected, hash_type = entry["hash_val"].lower(), entry["hash_type"].lower()
            if target.exists():
                if file_hash(target, hash_type) != expected:
                    problems.append(f"{entry['path']}: the file there has another {hash_type} than "
                                    f"large_files.yml's {expected}; remove it to fetch it again")
                continue
            download = staging / str(index)
            try:
                _download(entry["url"], download)
            except FetchError as error:
                problems.append(f"{entry['path']}: {error}")
                continue
            found = file_hash(download, hash_type)
            if found != expected:
                problems.append(f"{entry['path']}: {hash_type} of {entry['url']} is {found}, "
                                f"large_files.yml expects {expected}")
                continue
            ready.append((download, target))
        if problems:
            raise FetchError("large files not fetched (nothing was written):\n  " + "\n  ".join(problems))
        for download, target in ready:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(download, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [target_path(bundle_path, entry["path"]) for entry in entries]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    bundle = commands.add_parser("bundle", help="download and extract the bundle zip")
    bundle.add_argument("--url", required=True)
    bundle.add_argument("--bundle_dir", required=True)
    bundle.add_argument("--name", default=BUNDLE_NAME)
    bundle.add_argument("--version", default=None)
    bundle.add_argument("--sha256", default=None)
    large = commands.add_parser("large_files", help="download the files of large_files.yml")
    large.add_argument("--bundle_path", default=".")
    args = parser.parse_args(argv)
    try:
        if args.command == "bundle":
            print(fetch_bundle(args.url, args.bundle_dir, args.name, args.version, args.sha256))
        else:
            for path in fetch_large_files(args.bundle_path):
                print(path)
    except FetchError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
