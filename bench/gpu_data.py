"""A dataset folder as one compact, lossless .npz, and back: how data reaches a GPU machine.

A GPU machine has nothing of ``../shared`` and receives at most 64 MiB with the working tree, so
``bench/gpu_pack.sh`` packs CHAOST2 (images, labels, supervoxels) with ``pack`` and
``bench/gpu_bench.py`` rebuilds the NIfTI layout the project reads with ``unpack``.

Every volume is stored as int16 values (the source files' own range; ``pack`` refuses others).
Images, whose noise is what costs, are stored as their int16 differences along the first axis,
zig-zag mapped and split into a high-byte and a low-byte plane (the high plane is nearly all
zeros): ~30% smaller than plain int16 in the same deflate, and exact. Labels and supervoxels are
plain int16. Each file keeps its affine and on-disk dtype; small text files (``*.json``) ride along.
Needs numpy and nibabel only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FORMAT = 1


def _encode_image(array: np.ndarray) -> dict[str, np.ndarray]:
    delta = np.diff(array.astype(np.int32), axis=0, prepend=0)
    zigzag = ((delta << 1) ^ (delta >> 31)).astype(np.uint32)
    if zigzag.max(initial=0) >= 1 << 16:  # steps beyond 16 bits: plain int16 then
        return {"raw": array.astype(np.int16)}
    return {"hi": (zigzag >> 8).astype(np.uint8), "lo": (zigzag & 0xFF).astype(np.uint8)}


def _decode_image(parts: dict[str, np.ndarray]) -> np.ndarray:
    if "raw" in parts:
        return parts["raw"]
    zigzag = (parts["hi"].astype(np.int32) << 8) | parts["lo"].astype(np.int32)
    delta = (zigzag >> 1) ^ -(zigzag & 1)
    return np.cumsum(delta, axis=0).astype(np.int16)


def _as_int16(array: np.ndarray, name: str) -> np.ndarray:
    if array.size and (array.min() < -(1 << 15) or array.max() >= 1 << 15 or np.any(array != np.rint(array))):
        raise ValueError(f"{name}: values do not fit int16 exactly")
    return array.astype(np.int16)


def pack(root: str | Path, out: str | Path, images: list[str], others: list[str], texts: list[str] = ()) -> dict:
    """Pack the files matching the glob patterns (relative to ``root``): ``images`` delta-coded,
    ``others`` (labels, supervoxels) plain, ``texts`` as bytes. Returns a summary."""
    import nibabel as nib

    root, out = Path(root), Path(out)
    arrays: dict[str, np.ndarray] = {}
    manifest = {"format": FORMAT, "files": []}
    kinds = [("image", p) for p in images] + [("plain", p) for p in others]
    for kind, pattern in kinds:
        for path in sorted(root.glob(pattern)):
            rel = path.relative_to(root).as_posix()
            image = nib.load(str(path))
            values = _as_int16(np.asarray(image.dataobj), rel)
            key = f"f{len(manifest['files'])}"
            parts = _encode_image(values) if kind == "image" else {"raw": values}
            for part, array in parts.items():
                arrays[f"{key}_{part}"] = array
            arrays[f"{key}_affine"] = np.asarray(image.affine, dtype=np.float64)
            manifest["files"].append({"path": rel, "key": key, "dtype": str(image.get_data_dtype()),
                                      "parts": sorted(parts)})
    for pattern in texts:
        for path in sorted(root.glob(pattern)):
            key = f"t{len(manifest.setdefault('texts', []))}"
            arrays[key] = np.frombuffer(path.read_bytes(), dtype=np.uint8)
            manifest["texts"].append({"path": path.relative_to(root).as_posix(), "key": key})
    if not manifest["files"]:
        raise FileNotFoundError(f"no file under {root} matches {images + others}")
    arrays["manifest"] = np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return {"files": len(manifest["files"]), "bytes": out.stat().st_size}


def unpack(npz: str | Path, dest: str | Path, compresslevel: int = 1) -> list[Path]:
    """Write every packed file under ``dest`` (NIfTI with its affine and dtype); returns the paths."""
    import nibabel as nib

    dest = Path(dest)
    written = []
    nib.openers.Opener.default_compresslevel = compresslevel  # fast gzip: these files are read once
    with np.load(npz) as data:
        manifest = json.loads(bytes(data["manifest"]).decode())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{npz}: pack format {manifest.get('format')}, expected {FORMAT}")
        for entry in manifest["files"]:
            parts = {part: data[f"{entry['key']}_{part}"] for part in entry["parts"]}
            values = _decode_image(parts)
            path = dest / entry["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            image = nib.Nifti1Image(values.astype(entry["dtype"]), data[f"{entry['key']}_affine"])
            image.set_qform(image.affine, code=1)
            image.set_sform(image.affine, code=1)
            nib.save(image, str(path))
            written.append(path)
        for entry in manifest.get("texts", []):
            path = dest / entry["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(bytes(data[entry["key"]]))
            written.append(path)
    return written


def verify(root: str | Path, dest: str | Path, files: list[Path]) -> None:
    """Every unpacked NIfTI equals its source voxel for voxel (values and affine)."""
    import nibabel as nib

    for path in files:
        if path.suffix == ".json":
            continue
        rel = path.relative_to(dest)
        source, copy = nib.load(str(Path(root) / rel)), nib.load(str(path))
        if not np.array_equal(np.asarray(source.dataobj), np.asarray(copy.dataobj)):
            raise AssertionError(f"{rel}: values differ after the round trip")
        if not np.allclose(source.affine, copy.affine, atol=1e-5):
            raise AssertionError(f"{rel}: affine differs after the round trip")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("root")
    p.add_argument("out")
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--others", nargs="*", default=[])
    p.add_argument("--texts", nargs="*", default=[])
    p.add_argument("--verify", action="store_true", help="unpack into a temporary folder and compare")
    u = sub.add_parser("unpack")
    u.add_argument("npz")
    u.add_argument("dest")
    args = parser.parse_args()
    if args.command == "pack":
        summary = pack(args.root, args.out, args.images, args.others, args.texts)
        print(f"packed {summary['files']} files into {args.out}: {summary['bytes'] / 2 ** 20:.1f} MiB")
        if args.verify:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                verify(args.root, tmp, unpack(args.out, tmp))
            print("round trip verified: every file equal voxel for voxel")
    else:
        print(f"unpacked {len(unpack(args.npz, args.dest))} files into {args.dest}")
