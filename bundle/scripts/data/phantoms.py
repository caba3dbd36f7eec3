"""Synthetic abdominal-like MRI volumes, for tests, CI and demos that must not need real scans.

Each phantom is a small T2-like axial stack with a body outline, a spine, bowel-like distractors and
four labelled organs in the CHAOS label convention (1 liver, 2 right kidney, 3 left kidney,
4 spleen). Shapes, positions, sizes, z-ranges, contrasts and textures vary per volume, and organ
sizes, placement and their spread between volumes follow CHAOST2's labels (`ANATOMY_TARGETS`), so a
few-shot method has to match support and query rather than memorise one picture; organs differ
from their surroundings in mean intensity and texture, never by a constant value (smooth texture,
bias field, Rician noise, distractor blobs of organ-like brightness).

Generation is deterministic: volume `i` of seed `s` depends only on (s, i). `write_phantom_dataset`
writes the SSL-ALPNet layout that the `phantom` preset reads (`image_{pid}.nii.gz`,
`label_{pid}.nii.gz`, `supervoxels/superpix-MIDDLE_{pid}.nii.gz`, pids 1..n) with a flipped,
offset affine, and `phantoms.json` with the generator version and count (the bundle rewrites a
folder of another version, or of another count when one is asked, and refuses a folder of other
data); `make_phantoms` / `phantom_volumes` give the same data in memory. The supervoxels
are organ-scale like CHAOST2's (see `_supervoxels`), so supervoxel episodes mean what they mean there.

Arrays here are in slice-space order (depth, rows, cols); on disk they are stored as (X, Y, Z) =
(cols, rows, depth), which `scripts.data.volumes` reads back to the same order. Rows run from
posterior (spine, top of the image) to anterior, as the CHAOS slices appear in slice space; the
patient's right (liver, right kidney) is on the image's left; slices run from inferior to superior
(the kidneys below the liver), as CHAOST2's do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["PhantomCase", "make_phantom", "make_phantoms", "phantom_volumes", "write_phantom_dataset",
           "written_by_this_version", "organ_statistics", "PHANTOM_LABELS", "ANATOMY_TARGETS"]

PHANTOM_LABELS = {"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}
GENERATOR_VERSION = 4  # bump when the phantoms change: a dataset folder written by another version is rewritten
MARKER_FILE = "phantoms.json"
DEFAULT_VOLUMES = 10  # the embedded default dataset's size (the bundle's `phantom_volumes: null`)
SLICE_THICKNESS_MM = 6.0
FIELD_OF_VIEW_MM = 300.0  # in-plane spacing = FOV / size (2.34 mm at 128)

# CHAOST2's organs, measured on its 20 labelled volumes with `organ_statistics` (slice space,
# normalised coordinates; z from the first to the last slice): (mean, standard deviation between
# volumes) of the row and column of the centroid, the middle of the z-range, the z-extent as a
# fraction of the stack, and the largest cross-section as a fraction of the slice.
ANATOMY_TARGETS = {
    "liver":        {"row": (0.51, 0.037), "col": (0.29, 0.031), "z_mid": (0.59, 0.057), "z_extent": (0.65, 0.094), "max_area": (0.180, 0.032)},
    "spleen":       {"row": (0.36, 0.051), "col": (0.78, 0.040), "z_mid": (0.61, 0.076), "z_extent": (0.39, 0.089), "max_area": (0.044, 0.016)},
    "left_kidney":  {"row": (0.37, 0.040), "col": (0.69, 0.030), "z_mid": (0.37, 0.088), "z_extent": (0.42, 0.058), "max_area": (0.024, 0.004)},
    "right_kidney": {"row": (0.39, 0.050), "col": (0.28, 0.028), "z_mid": (0.35, 0.080), "z_extent": (0.40, 0.067), "max_area": (0.026, 0.004)},
}


@dataclass
class PhantomCase:
    """One phantom in (depth, rows, cols) order; `affine` maps the on-disk (X, Y, Z) grid to mm."""

    pid: str
    image: np.ndarray        # float32, MRI-like intensities (arbitrary units, >= 0)
    label: np.ndarray        # int16, 0 background, 1..4 organs
    supervoxels: np.ndarray  # int32, 0 outside the body, 1..N inside
    spacing: tuple[float, float, float]  # (slice, row, col) mm
    affine: np.ndarray       # 4x4 for the file layout

    @staticmethod
    def to_file_layout(arr: np.ndarray) -> np.ndarray:
        """(depth, rows, cols) -> (X, Y, Z) as stored in NIfTI."""
        return np.ascontiguousarray(np.asarray(arr).transpose(2, 1, 0))


def _gaussian_filter(values: np.ndarray, sigma: tuple[float, ...]) -> np.ndarray:
    """Gaussian filter by FFT (numpy only, periodic borders)."""
    shape = values.shape
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in shape[:-1]], np.fft.rfftfreq(shape[-1]), indexing="ij")
    gain = np.exp(-2.0 * np.pi ** 2 * sum((f * s) ** 2 for f, s in zip(freqs, sigma)))
    return np.fft.irfftn(np.fft.rfftn(values) * gain, s=shape)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: tuple[float, ...]) -> np.ndarray:
    """Unit-variance Gaussian-filtered white noise."""
    out = _gaussian_filter(rng.standard_normal(shape), sigma)
    return (out - out.mean()) / (out.std() + 1e-8)


class _Grid:
    """Normalised in-plane coordinates (0..1) and slice indices of one phantom."""

    def __init__(self, size: int, depth: int):
        self.size, self.depth = size, depth
        self.z = np.arange(depth, dtype=np.float32)[:, None, None]
        self.r = ((np.arange(size, dtype=np.float32) + 0.5) / size)[None, :, None]
        self.c = ((np.arange(size, dtype=np.float32) + 0.5) / size)[None, None, :]


def _blob(grid: _Grid, rng: np.random.Generator, centre: tuple[float, float], semi: tuple[float, float],
          z_centre: float, z_half: float, angle_deg: float = 0.0, wobble: float = 0.08,
          min_scale: float = 0.4, drift: float = 0.02) -> np.ndarray:
    """A deformed ellipsoid: elliptic cross-sections with an angular wobble, shrinking towards its z ends.

    Slices with |z - z_centre| < z_half hold a cross-section of at least `min_scale` of the full one,
    so the organ occupies one contiguous z-range; its centre drifts a little from slice to slice.
    """
    t = (grid.z - z_centre) / z_half
    scale = np.where(np.abs(t) < 1.0, np.maximum(np.sqrt(np.clip(1.0 - t ** 2, 0.0, 1.0)), min_scale), 0.0)
    dr = grid.r - centre[0] - drift * t * rng.uniform(-1, 1)
    dc = grid.c - centre[1] - drift * t * rng.uniform(-1, 1)
    a = np.deg2rad(angle_deg)
    u = (dr * np.cos(a) + dc * np.sin(a)) / semi[0]
    v = (-dr * np.sin(a) + dc * np.cos(a)) / semi[1]
    theta = np.arctan2(v, u)
    radius = np.ones_like(theta)
    for k in (2, 3, 5):
        radius = radius + wobble / k * rng.uniform(0.5, 1.5) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    return (u ** 2 + v ** 2) <= (scale * radius) ** 2


def _organ_z(rng: np.random.Generator, depth: int, centre: tuple[float, float], half: tuple[float, float]):
    """A z-centre and half-extent (in slices) kept inside the volume."""
    z_half = max(1.6, depth * rng.uniform(*half))
    z_centre = depth * rng.uniform(*centre)
    z_centre = float(np.clip(z_centre, z_half - 0.5, depth - 0.5 - z_half))
    return z_centre, z_half


def _blur(rng: np.random.Generator, mask: np.ndarray, sigma: tuple[float, ...], jitter: float) -> np.ndarray:
    """A smoothed {0, 1} mask plus `jitter` of smooth noise: thresholding it at 0.5 moves the
    boundary by a few pixels, as an image-driven over-segmentation's boundaries stray from the truth."""
    smooth = _gaussian_filter(mask.astype(np.float32), sigma)
    return smooth + jitter * _smooth_noise(rng, mask.shape, tuple(3 * s for s in sigma))


def _supervoxels(rng: np.random.Generator, body: np.ndarray, tissue: np.ndarray, n_seeds: int = 8) -> np.ndarray:
    """Organ-scale 3D supervoxels inside the body, ids 1..N, shaped like the real CHAOST2 files.

    The SSL-ALPNet supervoxels shipped with CHAOST2 are few and large (20-30 per volume, spanning most
    slices; measured on three patients, an organ's largest supervoxel covers 33-97% of it at 67-99%
    purity), so supervoxel episodes there are close to organ episodes. Here: the tissue map with
    boundaries that stray by a few pixels; the tissue outside the labelled organs is cut by a few
    Voronoi cells that run through the whole stack (z counts little in the distance), one
    supervoxel per (cell, tissue) pair, and `make_phantom` gives each its own brightness, so that,
    as with real supervoxels, their boundaries are in the image.
    """
    depth, size = body.shape[0], body.shape[1]
    values = [v for v in np.unique(tissue[body]) if v != 0]
    sigma = (0.5, 1.5 * size / 128, 1.5 * size / 128)
    scores = np.stack([np.full(body.shape, 0.5, dtype=np.float32)] +
                      [_blur(rng, tissue == v, sigma, 0.08).astype(np.float32) for v in values])
    strayed = np.asarray([0, *values])[np.argmax(scores, axis=0)]
    inside = np.argwhere(body)
    seeds = inside[rng.choice(len(inside), size=min(n_seeds, len(inside)), replace=False)].astype(np.float32)
    z = np.arange(depth, dtype=np.float32)[:, None, None] / depth
    r = np.arange(size, dtype=np.float32)[None, :, None] / size
    c = np.arange(size, dtype=np.float32)[None, None, :] / size
    best = np.full(body.shape, np.inf, dtype=np.float32)
    cell = np.zeros(body.shape, dtype=np.int32)
    for i, (sz, sr, sc) in enumerate(seeds):
        d = ((z - sz / depth) * 0.15) ** 2 + (r - sr / size) ** 2 + (c - sc / size) ** 2
        closer = d < best
        best = np.where(closer, d, best)
        cell[closer] = i
    # labelled organs stay whole, as far as their strayed outline goes
    organ = np.isin(strayed, list(PHANTOM_LABELS.values()))
    key = np.where(organ, 0, cell * 16) + strayed.astype(np.int32)
    out = np.zeros(body.shape, dtype=np.int32)
    _, ids = np.unique(key[body], return_inverse=True)
    out[body] = ids.reshape(-1).astype(np.int32) + 1
    return out


def make_phantom(index: int, size: int = 128, depth: int = 24, seed: int = 0) -> PhantomCase:
    """Phantom number `index` (pid `index + 1`) of the series `seed`."""
    if size < 32 or depth < 8:
        raise ValueError(f"phantom needs size >= 32 and depth >= 8, got size={size}, depth={depth}")
    rng = np.random.default_rng([int(seed), int(index)])
    g = _Grid(size, depth)
    shape = (depth, size, size)

    # Organ sizes, positions, z-ranges and their spread between volumes follow CHAOST2's labels
    # (measured on its 20 volumes, see ANATOMY_TARGETS): a phantom series is then as hard for a
    # method that copies the support's mask as the real data is, and organs are as large in latent pixels.
    # body outline: an ellipse whose radius wobbles with angle and breathes a little along z
    bc_r, bc_c = 0.52 + rng.normal(0, 0.03), 0.5 + rng.normal(0, 0.025)
    b_r, b_c = rng.uniform(0.31, 0.39), rng.uniform(0.41, 0.47)
    zz = g.z / depth
    b_scale = 1.0 + rng.uniform(-0.05, 0.05) * (zz - 0.5)
    theta = np.arctan2((g.r - bc_r) / b_r, (g.c - bc_c) / b_c)
    b_rad = b_scale * (1.0 + 0.03 * np.sin(2 * theta + rng.uniform(0, 6.3)) + 0.02 * np.sin(3 * theta + rng.uniform(0, 6.3)))
    body_f = ((g.r - bc_r) / b_r) ** 2 + ((g.c - bc_c) / b_c) ** 2
    body = np.broadcast_to(body_f <= b_rad ** 2, shape).copy()
    rim = body & (body_f > (b_rad * 0.93) ** 2)

    # spine: posterior (top) centre, with a bright canal
    sp_r, sp_c = bc_r - b_r + rng.uniform(0.09, 0.11), bc_c + rng.normal(0, 0.01)
    vert = np.broadcast_to(((g.r - sp_r - 0.012) ** 2 + (g.c - sp_c) ** 2) <= 0.042 ** 2, shape)
    canal = np.broadcast_to(((g.r - sp_r + 0.04) ** 2 + (g.c - sp_c) ** 2) <= 0.016 ** 2, shape)

    # organs, in slice-space normalised coordinates (rows posterior->anterior, cols patient right->left)
    # z runs from inferior to superior as in CHAOST2's slice order: the kidneys lie below the liver
    liver_z = _organ_z(rng, depth, (0.50, 0.68), (0.25, 0.40))
    liver = _blob(g, rng, (bc_r + rng.uniform(-0.04, 0.03), bc_c - b_c * rng.uniform(0.46, 0.70)),
                  (rng.uniform(0.20, 0.33), rng.uniform(0.18, 0.27)), *liver_z, angle_deg=rng.uniform(-20, 20),
                  wobble=0.12)
    lobe = _blob(g, rng, (bc_r + rng.uniform(0.06, 0.12), bc_c + rng.uniform(-0.06, 0.04)),
                 (rng.uniform(0.07, 0.10), rng.uniform(0.11, 0.16)), liver_z[0] - 0.15 * liver_z[1],
                 0.6 * liver_z[1], angle_deg=rng.uniform(-25, 5), wobble=0.1)
    liver = liver | lobe
    spleen_z = _organ_z(rng, depth, (0.48, 0.74), (0.12, 0.27))
    spleen = _blob(g, rng, (sp_r + rng.uniform(-0.03, 0.09), bc_c + b_c * rng.uniform(0.56, 0.76)),
                   (rng.uniform(0.17, 0.30), rng.uniform(0.09, 0.14)), *spleen_z, angle_deg=rng.uniform(-40, -15))
    kidneys = []
    for side, z_centre in ((-1, (0.20, 0.48)), (1, (0.23, 0.51))):  # right kidney (image left) sits lower
        kz = _organ_z(rng, depth, z_centre, (0.16, 0.25))
        kidneys.append(_blob(g, rng, (sp_r + rng.uniform(0.09, 0.16), sp_c + side * rng.uniform(0.17, 0.23)),
                             (rng.uniform(0.10, 0.125), rng.uniform(0.062, 0.078)), *kz,
                             angle_deg=side * rng.uniform(15, 35), wobble=0.05, drift=0.01))

    label = np.zeros(shape, dtype=np.int16)
    for value, mask in ((1, liver), (4, spleen), (2, kidneys[0]), (3, kidneys[1])):
        label[mask & body & ~vert] = value  # later organs lie over earlier ones
    label[rim] = 0

    # bowel-like distractors: unlabelled blobs as bright or dark as the organs
    tissue = np.zeros(shape, dtype=np.float32)
    distract = np.zeros(shape, dtype=bool)
    for _ in range(int(rng.integers(4, 8))):
        bz = _organ_z(rng, depth, (0.2, 0.9), (0.08, 0.2))
        blob = _blob(g, rng, (bc_r + rng.uniform(0.0, 0.25), bc_c + rng.uniform(-0.2, 0.2)),
                     (rng.uniform(0.03, 0.06), rng.uniform(0.03, 0.06)), *bz, wobble=0.15) & body & (label == 0)
        tissue[blob] = rng.uniform(0.15, 0.75)
        distract |= blob

    # supervoxels before intensities: the soft-tissue compartments they cut out differ in brightness
    # (as fat and muscle do), so their boundaries are in the image, as real supervoxels' are
    organ_tissue = label.astype(np.int32) + 8 * vert + 9 * rim + 10 * distract
    supervoxels = _supervoxels(rng, body, organ_tissue)
    compartment = 1.0 + rng.uniform(-0.2, 0.2, size=int(supervoxels.max()) + 1)

    # intensities: T2-like, random per volume; texture, bias field and Rician noise on top
    fine = _smooth_noise(rng, shape, (0.3, 1.2 * size / 128, 1.2 * size / 128))
    coarse = _smooth_noise(rng, shape, (1.0, 4.0 * size / 128, 4.0 * size / 128))
    img = np.full(shape, 0.0, dtype=np.float32)
    soft = rng.uniform(0.25, 0.33)
    img[body] = soft * compartment[supervoxels[body]] + 0.05 * coarse[body]
    img[rim] = rng.uniform(0.38, 0.46) + 0.04 * fine[rim]
    img[distract] = tissue[distract] + 0.05 * fine[distract]
    img[vert] = rng.uniform(0.10, 0.16) + 0.02 * fine[vert]
    img[canal] = rng.uniform(0.75, 0.9)
    organ_level = {1: rng.uniform(0.16, 0.22), 2: rng.uniform(0.50, 0.58), 3: rng.uniform(0.50, 0.58),
                   4: rng.uniform(0.42, 0.52)}
    organ_texture = {1: (0.025, 0.03), 2: (0.02, 0.02), 3: (0.02, 0.02), 4: (0.015, 0.05)}
    for value, level in organ_level.items():
        m = label == value
        tf, tc = organ_texture[value]
        img[m] = level + tf * fine[m] + tc * coarse[m]
    # kidney medulla: a brighter core; liver vessels: bright dots inside the liver
    for value, k in ((2, kidneys[0]), (3, kidneys[1])):
        m = label == value
        core = m & (_smooth_noise(rng, shape, (0.5, 2.0, 2.0)) > 0.6)
        img[core] += rng.uniform(0.12, 0.2)
    vessels = (label == 1) & (_smooth_noise(rng, shape, (0.6, 1.5 * size / 128, 1.5 * size / 128)) > 1.9)
    img[vessels] = rng.uniform(0.55, 0.7)
    bias = 1.0 + rng.uniform(0.08, 0.18) * _smooth_noise(rng, shape, (3.0, 20.0 * size / 128, 20.0 * size / 128))
    img = np.clip(img * bias, 0.0, None) ** rng.uniform(0.85, 1.15) * rng.uniform(0.85, 1.15)
    sigma = rng.uniform(0.015, 0.03)
    img = np.sqrt((img + sigma * rng.standard_normal(shape)) ** 2 + (sigma * rng.standard_normal(shape)) ** 2)
    image = (img * 1000.0).astype(np.float32)

    spacing_rc = FIELD_OF_VIEW_MM / size
    affine = np.array([[-spacing_rc, 0, 0, FIELD_OF_VIEW_MM / 2],
                       [0, -spacing_rc, 0, FIELD_OF_VIEW_MM / 2 - 20.0],
                       [0, 0, SLICE_THICKNESS_MM, -SLICE_THICKNESS_MM * depth / 2],
                       [0, 0, 0, 1]], dtype=np.float64)
    case = PhantomCase(str(index + 1), image, label, supervoxels, (SLICE_THICKNESS_MM, spacing_rc, spacing_rc), affine)
    _check(case)
    return case


def organ_statistics(labels: list[np.ndarray], value: int) -> dict[str, tuple[float, float]]:
    """(mean, std) over volumes of one organ's placement and size, as in ANATOMY_TARGETS; each label
    is (depth, rows, cols) and must contain the organ."""
    rows = []
    for label in labels:
        organ = label == value
        z, r, c = np.nonzero(organ)
        if z.size == 0:
            raise ValueError(f"label value {value} is missing from a volume")
        depth, height, width = organ.shape
        rows.append((r.mean() / height, c.mean() / width, (z.min() + z.max()) / 2 / depth,
                     len(np.unique(z)) / depth, organ.sum(axis=(1, 2)).max() / (height * width)))
    rows = np.asarray(rows)
    return {key: (float(rows[:, i].mean()), float(rows[:, i].std()))
            for i, key in enumerate(("row", "col", "z_mid", "z_extent", "max_area"))}


def _check(case: PhantomCase) -> None:
    """The promises of the module: every organ present, each in one contiguous z-range."""
    for name, value in PHANTOM_LABELS.items():
        zs = np.flatnonzero((case.label == value).any(axis=(1, 2)))
        if len(zs) == 0 or zs[-1] - zs[0] + 1 != len(zs):
            raise RuntimeError(f"phantom {case.pid}: {name} occupies slices {zs.tolist()}, not one contiguous range")


def make_phantoms(n_volumes: int = DEFAULT_VOLUMES, size: int = 128, depth: int = 24, seed: int = 0) -> list[PhantomCase]:
    """`n_volumes` phantoms in memory, pids "1".."n"."""
    return [make_phantom(i, size=size, depth=depth, seed=seed) for i in range(n_volumes)]


def phantom_volumes(n_volumes: int = 4, size: int = 64, depth: int = 16, seed: int = 0, out_size: int = 256,
                    with_supervoxels: bool = True):
    """Phantoms as slice-space `Volume`s, through the same transforms as files would go (no disk I/O).

    The int16 rounding of the written image is applied too, so these equal what the `phantom`
    preset loads from `write_phantom_dataset` output.
    """
    from .volumes import volume_from_arrays  # imports MONAI; keep `make_phantom` light

    out = []
    for case in make_phantoms(n_volumes, size=size, depth=depth, seed=seed):
        volume = volume_from_arrays(
            case.pid, PhantomCase.to_file_layout(np.rint(case.image).astype(np.int16)),
            PhantomCase.to_file_layout(case.label),
            PhantomCase.to_file_layout(case.supervoxels) if with_supervoxels else None,
            affine=case.affine, size=out_size)
        volume.meta["preset"] = "phantom"
        out.append(volume)
    return out


def write_phantom_dataset(out_dir: str | Path, n_volumes: int = DEFAULT_VOLUMES, size: int = 128, depth: int = 24,
                          seed: int = 0) -> Path:
    """Write `n_volumes` phantoms as NIfTI in the layout of the `phantom` preset; returns `out_dir`."""
    import nibabel as nib

    out_dir = Path(out_dir)
    marker = out_dir / MARKER_FILE
    patterns = ("image_*.nii.gz", "label_*.nii.gz", "supervoxels/superpix-MIDDLE_*.nii.gz")
    if not marker.is_file() and any(next(out_dir.glob(p), None) for p in patterns):
        raise FileExistsError(f"{out_dir} holds images but no {MARKER_FILE}: it is not a phantom folder, "
                              "and phantoms are not written over other data (choose another dataset_dir)")
    (out_dir / "supervoxels").mkdir(parents=True, exist_ok=True)
    # marked as ours but incomplete first, then the earlier series goes: a folder rewritten from 20
    # volumes to 10 must not keep pids 11..20, and one interrupted here reads as not written
    marker.write_text(json.dumps({"generator_version": GENERATOR_VERSION, "complete": False}) + "\n")
    for pattern in patterns:
        for stale in out_dir.glob(pattern):
            stale.unlink()
    for case in make_phantoms(n_volumes, size=size, depth=depth, seed=seed):
        for name, arr, dtype in ((f"image_{case.pid}.nii.gz", np.rint(case.image), np.int16),
                                 (f"label_{case.pid}.nii.gz", case.label, np.int16),
                                 (f"supervoxels/superpix-MIDDLE_{case.pid}.nii.gz", case.supervoxels, np.int32)):
            img = nib.Nifti1Image(PhantomCase.to_file_layout(arr).astype(dtype), case.affine)
            img.set_qform(case.affine, code=1)
            img.set_sform(case.affine, code=1)
            nib.save(img, out_dir / name)
    # completed last: a folder holds a whole dataset of this version only once the marker says so
    marker.write_text(json.dumps({"generator_version": GENERATOR_VERSION, "n_volumes": n_volumes, "size": size,
                                  "depth": depth, "seed": seed, "complete": True}) + "\n")
    return out_dir


def written_by_this_version(folder: str | Path, n_volumes: int | None = None) -> bool:
    """Whether `folder` holds a complete phantom dataset written by this generator version (and, when
    `n_volumes` is given, with that many volumes)."""
    try:
        marker = json.loads((Path(folder) / MARKER_FILE).read_text())
        return (marker.get("generator_version") == GENERATOR_VERSION and marker.get("complete", True)
                and (n_volumes is None or marker.get("n_volumes") == n_volumes))
    except (OSError, ValueError, AttributeError):
        return False
