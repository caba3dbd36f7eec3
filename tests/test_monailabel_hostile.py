"""The MONAI Label server under hostile and malformed requests (issue 39, items 1-4 and 6).

One server (tiny checkpoint, 64x64x10 phantoms, ``TMPDIR`` inside the test folder so that its
uploads can be watched); every case sends one request a careless or hostile client could send and
checks the answer's status and words, that the answer shows no server path, that the datastore is
byte for byte as before ("nothing stored") and that no upload is left on disk ("nothing left
behind"). ``WRITE_SECURITY_TABLE=1`` writes what the server answered into the table of
``docs/security.md``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

requests = pytest.importorskip("requests")
pytest.importorskip("monailabel")

from monailabel_server import MonaiLabelServer  # noqa: E402
from processes import infer_parts  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SECURITY_DOC = REPO / "docs" / "security.md"
TABLE_START, TABLE_END = "<!-- table: tests/test_monailabel_hostile.py -->", "<!-- end of table -->"
ROWS: list[tuple[str, int, str, str]] = []


class Site:
    def __init__(self, server: MonaiLabelServer, root: Path, phantoms: Path, studies: Path, tmpdir: Path):
        self.server, self.root, self.phantoms, self.studies, self.tmpdir = server, root, phantoms, studies, tmpdir
        self.url = server.url
        self.at_start = set(self._temp_files())  # MONAI Label's own start-up files (its log config)

    def infer(self, model="fewshot", image="image_2", params=None, label: Path | None = None,
              file: Path | None = None, raw_params: str | None = None):
        files = {}
        if label is not None:
            files["label"] = (label.name, label.read_bytes(), "application/octet-stream")
        if file is not None:
            files["file"] = (file.name, file.read_bytes(), "application/octet-stream")
        query = {"image": image} if image is not None else {}
        return requests.post(f"{self.url}/infer/{model}", params=query, files=files or None, timeout=120,
                             data={"params": raw_params if raw_params is not None else json.dumps(params or {})})

    def save(self, label: Path, image="image_3", tag="final"):
        return requests.put(f"{self.url}/datastore/label", params={"image": image, "tag": tag},
                            files={"label": (label.name, label.read_bytes(), "application/octet-stream")}, timeout=60)

    def nifti(self, name: str, array, like="image_3", affine=None) -> Path:
        path = self.root / "client" / name
        path.parent.mkdir(exist_ok=True)
        reference = nib.load(self.studies / f"{like}.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(array), reference.affine if affine is None else affine), path)
        return path

    def datastore_state(self, quiet_s: float = 1.0) -> dict[str, str]:
        """Every file of the datastore folder and its content digest (the task's own records aside),
        once the folder has not changed for ``quiet_s``: MONAI Label's file watcher rewrites its
        datastore file a moment after a label is stored or removed (an earlier test's, not this one's)."""
        deadline = time.time() + 30
        while time.time() < deadline:
            newest = max((p.stat().st_mtime for p in self.studies.rglob("*") if p.is_file()), default=0.0)
            if time.time() - newest >= quiet_s:
                break
            time.sleep(0.2)
        return {str(p.relative_to(self.studies)): hashlib.sha1(p.read_bytes()).hexdigest()
                for p in sorted(self.studies.rglob("*")) if p.is_file() and ".fewshot" not in p.parts
                and p.name != ".lock"}

    def _temp_files(self) -> list[str]:
        return [str(p.relative_to(self.tmpdir)) for p in self.tmpdir.rglob("*") if p.is_file()]

    def left_behind(self, wait_s: float = 3.0) -> list[str]:
        """Files under the server's TMPDIR (its uploads, results, work files) once the call is over,
        beyond those the server wrote when it started."""
        deadline = time.time() + wait_s
        while True:
            files = [f for f in self._temp_files() if f not in self.at_start]
            if not files or time.time() > deadline:
                return files
            time.sleep(0.2)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from scripts.data.phantoms import write_phantom_dataset
    from scripts.network.model_file import save_checkpoint_file
    from scripts.network.presets import build_segmenter

    root = tmp_path_factory.mktemp("hostile")
    phantoms = write_phantom_dataset(root / "phantoms", n_volumes=4, size=64, depth=10, seed=0)
    studies = root / "studies"
    studies.mkdir()
    for pid in (1, 2, 3):
        (studies / f"image_{pid}.nii.gz").write_bytes((phantoms / f"image_{pid}.nii.gz").read_bytes())
    reference = nib.load(phantoms / "image_1.nii.gz")
    nib.save(nib.Nifti1Image(np.full(reference.shape, 7, np.int16), reference.affine), studies / "image_const.nii.gz")
    checkpoint = root / "model" / "tiny.pt"
    save_checkpoint_file(build_segmenter(preset="tiny"), checkpoint)
    tmpdir = root / "tmp"
    tmpdir.mkdir()
    server = MonaiLabelServer(str(studies), root / "server", {
        "checkpoint": str(checkpoint), "labels": "phantom", "max_shots": "2", "train_dir": str(root / "train")},
        env={"TMPDIR": str(tmpdir)})
    server.start()
    try:
        site = Site(server, root, phantoms, studies, tmpdir)
        gt = np.asarray(nib.load(phantoms / "label_1.nii.gz").dataobj)
        z = [int(k) for k in np.flatnonzero((gt == 1).any(axis=(0, 1)))]
        drawn = np.zeros_like(gt)
        for k in (z[len(z) // 3], z[2 * len(z) // 3]):
            drawn[:, :, k] = np.where(gt[:, :, k] == 1, 1, 0)
        response = site.save(site.nifti("liver_1.nii.gz", drawn.astype(np.int16), like="image_1"), image="image_1")
        assert response.status_code == 200, response.text
        yield site
    finally:
        server.stop()
        if os.environ.get("WRITE_SECURITY_TABLE") and ROWS:
            _write_table()


def _write_table():
    lines = ["| # | Input | Status | Message (start) | Disk |", "|---|---|---|---|---|"]
    for i, (what, status, message, disk) in enumerate(ROWS, start=1):
        message = message.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {i} | {what} | {status} | {message[:170]}{'...' if len(message) > 170 else ''} | {disk} |")
    text = SECURITY_DOC.read_text()
    head, rest = text.split(TABLE_START, 1)
    tail = rest.split(TABLE_END, 1)[1]
    SECURITY_DOC.write_text(f"{head}{TABLE_START}\n{chr(10).join(lines)}\n{TABLE_END}{tail}")


def _gzip_bomb(path: Path, shape=(1024, 1024, 512)) -> Path:
    """A small gzip whose NIfTI header promises ``shape`` int16 voxels (1 GB for the default)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    path.parent.mkdir(exist_ok=True)
    with gzip.open(path, "wb", compresslevel=9) as out:
        out.write(header.binaryblock + b"\0" * 4)
        out.write(b"\0" * (16 << 20))  # the first 16 MB of zeros; a reader that decompresses all wants 1 GB
    return path


def _check(site: Site, what: str, response, status: int, words: str, before: dict, stored: bool = False):
    """The answer, no server path in it, nothing stored, nothing left behind; one row of the table."""
    assert response.status_code == status, response.text[:1500]
    body = response.text
    message = response.json()["detail"] if status != 200 else infer_parts(response, site.root)[0].get("message", "")
    assert words in message, body[:1500]
    assert str(site.root) not in body and str(site.tmpdir) not in body, f"a server path in the answer: {body[:800]}"
    left = site.left_behind()
    assert left == [], f"left on disk after the call: {left}"
    if not stored:
        assert site.datastore_state() == before, "the datastore changed"
    ROWS.append((what, status, message, "nothing left behind" if stored else "nothing stored, nothing left behind"))


# ---- 1. only datastore ids and the request's own uploads are read ------------------------------------
def test_a_file_outside_the_datastore_cannot_be_named_as_image(site):
    before = site.datastore_state()
    present = site.infer(image=str(site.phantoms / "image_4.nii.gz"))  # a real scan, outside the datastore
    _check(site, "`image=<path of a scan outside the datastore>`", present, 404, "image not found", before)
    missing = site.infer(image=str(site.root / "no" / "such.nii.gz"))
    _check(site, "`image=<path that does not exist>`", missing, 404, "image not found", before)
    assert present.json() == missing.json(), "present and missing files must answer alike"
    by_path = site.infer(image=str(site.studies / "image_2.nii.gz"), params={"support_image": "image_1"})
    _check(site, "`image=<path of a datastore file>` (ids only)", by_path, 404, "image not found", before)
    forged = site.infer(image=str(site.phantoms / "image_4.nii.gz"), params={"session": {"session_id": "x"}})
    _check(site, "`image=<path>` with a forged `params.session`", forged, 404, "image not found", before)


def test_a_file_outside_the_uploads_cannot_be_named_as_label(site):
    before = site.datastore_state()
    present = site.infer(image="image_2", params={"label": str(site.phantoms / "label_2.nii.gz")})
    _check(site, "`params.label=<path of a label file on the server>`", present, 400, "cannot name a file", before)
    missing = site.infer(image="image_2", params={"label": str(site.root / "absent.nii.gz")})
    _check(site, "`params.label=<path that does not exist>`", missing, 400, "cannot name a file", before)
    assert present.json() == missing.json()
    with_upload = site.infer(image="image_2", params={"label": str(site.phantoms / "label_2.nii.gz")},
                             label=site.nifti("l.nii.gz", np.zeros((64, 64, 10), np.int16), like="image_2"))
    _check(site, "an uploaded label, and `params.label=<server path>` over it", with_upload, 400, "cannot name a file",
           before)


# ---- 2. headers before voxels ----------------------------------------------------------------------
def test_a_small_file_that_expands_huge_is_refused_from_its_header(site):
    before = site.datastore_state()
    bomb = _gzip_bomb(site.root / "client" / "bomb.nii.gz")
    assert bomb.stat().st_size < 100_000
    as_label = site.infer("fewshot_scribbles", "image_2", label=bomb)
    _check(site, "label upload: 30 KB gzip whose header says 1024x1024x512 (1 GB)", as_label, 413, "voxels", before)
    as_image = site.infer(image=None, file=bomb, params={"support_image": "image_1"})
    _check(site, "image upload (`file`): the same gzip", as_image, 413, "voxels", before)
    saved = site.save(bomb)
    _check(site, "`PUT /datastore/label`: the same gzip", saved, 413, "voxels", before)


def test_uploads_must_be_one_nifti_file_that_reads(site):
    before = site.datastore_state()
    mhd = site.root / "client" / "label.mhd"
    mhd.write_text("ObjectType = Image\nNDims = 3\nDimSize = 64 64 10\nElementType = MET_UCHAR\n"
                   "ElementDataFile = /etc/hostname\n")
    _check(site, "label upload: a MetaImage header whose data file is `/etc/hostname`",
           site.infer("fewshot_scribbles", "image_2", label=mhd), 415, "one NIfTI file", before)
    garbage = site.root / "client" / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(os.urandom(4096)))
    _check(site, "label upload: random bytes named `.nii.gz`", site.infer("fewshot_scribbles", "image_2", label=garbage),
           422, "cannot read the header", before)
    rgb = site.nifti("rgb.nii.gz", np.zeros((64, 64, 10, 3), np.uint8))
    _check(site, "label upload: a 4D (RGB) NIfTI", site.infer("fewshot_scribbles", "image_2", label=rgb), 422,
           "3D single-channel", before)
    floats = site.nifti("floats.nii.gz", np.random.default_rng(0).random((64, 64, 10)).astype(np.float32), like="image_2")
    _check(site, "label upload: an image (non-integer values)", site.infer("fewshot_scribbles", "image_2", label=floats),
           422, "non-integer", before)


# ---- 3. uploads of failed requests ----------------------------------------------------------------
def test_no_upload_is_left_behind_whatever_fails(site):
    before = site.datastore_state()
    small = site.nifti("wrong_grid.nii.gz", np.ones((8, 8, 4), np.int16), affine=np.eye(4))
    _check(site, "label upload of another grid (8x8x4)", site.infer("fewshot_scribbles", "image_2", label=small), 422,
           "shape", before)
    # MONAI Label fails this one itself, after writing the upload and before the app sees it ...
    broken = site.infer("fewshot_scribbles", "image_2", label=small, raw_params="{not json")
    assert broken.status_code == 500 and str(site.root) not in broken.text
    # ... and the next call through the app removes what it left
    response = site.infer(params={"support_image": "nope"})
    _check(site, "malformed `params` JSON with an upload (MONAI Label: 500); its upload removed by the next call",
           response, 404, "support_image", before)


# ---- 4. what PUT /datastore/label stores ---------------------------------------------------------------
def test_a_bad_label_is_not_stored(site):
    before = site.datastore_state()
    shape = nib.load(site.studies / "image_3.nii.gz").shape
    garbage = site.root / "client" / "garbage_label.nii.gz"
    garbage.parent.mkdir(exist_ok=True)
    garbage.write_bytes(gzip.compress(os.urandom(4096)))
    cases = [
        ("`PUT /datastore/label`: an all-zero final label", site.save(site.nifti("zero.nii.gz", np.zeros(shape, np.int16))),
         422, "empty"),
        ("`PUT /datastore/label`: a label of another shape",
         site.save(site.nifti("small.nii.gz", np.ones((32, 32, 10), np.int16))), 422, "shape"),
        ("`PUT /datastore/label`: a label with another affine",
         site.save(site.nifti("moved.nii.gz", np.ones(shape, np.int16), affine=np.diag([2.0, 2, 2, 1]))), 422, "affine"),
        ("`PUT /datastore/label`: random bytes named `.nii.gz`",
         site.save(garbage), 422, "cannot read"),
        ("`PUT /datastore/label`: tag `../../escaped`",
         site.save(site.nifti("ok.nii.gz", np.ones(shape, np.int16)), tag="../../escaped"), 400, "plain name"),
        ("`PUT /datastore/label`: unknown image id", site.save(site.root / "client" / "ok.nii.gz", image="nope"),
         404, "not an image of the datastore"),
    ]
    for what, response, status, words in cases:
        _check(site, what, response, status, words, before)
    assert not list(site.root.rglob("escaped*"))
    added = requests.put(f"{site.url}/datastore/image", params={"image": "../outside"}, timeout=60,
                         files={"file": ("x.nii.gz", (site.studies / "image_3.nii.gz").read_bytes(), "application/gzip")})
    _check(site, "`PUT /datastore/image` (add an image) with id `../outside`", added, 400, "plain name", before)
    assert not list(site.root.rglob("outside*"))
    good = site.save(site.nifti("good.nii.gz", np.asarray(nib.load(site.phantoms / "label_3.nii.gz").dataobj)))
    assert good.status_code == 200, good.text  # a label on the image's grid is stored as before
    requests.delete(f"{site.url}/datastore/label", params={"id": "image_3", "tag": "final"}, timeout=30)


# ---- 6. answers: no paths, known models, a word for an empty result ---------------------------------------
def test_an_unknown_model_answers_404_with_the_known_ones(site):
    before = site.datastore_state()
    response = site.infer(model="segmentation_spleen")
    _check(site, "`POST /infer/segmentation_spleen` (no such model)", response, 404, "fewshot_scribbles", before)


def test_a_constant_image_says_why_its_result_is_empty(site):
    before = site.datastore_state()
    response = site.infer(image="image_const", params={"support_image": "image_1"})
    _check(site, "a constant image (every voxel 7), support from another image", response, 200, "constant", before,
           stored=True)
    params, path = infer_parts(response, site.root)
    assert not np.asarray(nib.load(path).dataobj).any()
