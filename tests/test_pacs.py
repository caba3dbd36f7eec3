"""The app on a real PACS: Orthanc with DICOMweb as MONAI Label's datastore, DICOM SEG in and out.

One Orthanc (tests/orthanc.py) and one MONAI Label server (``--studies <orthanc>/dicom-web``) for the
module: four 64x64x10 phantoms written as DICOM series (one study each), a series of phantom 4 with a
missing slice, and, where ../shared is present, one CHAOS volume. The user's label arrives as OHIF
saves it: a DICOM SEG in the PACS (MANUAL segments, frames only where drawn, the series' Frame of
Reference). Skipped with the reason when Orthanc, its DICOMweb plugin or Chromium are missing
(``make setup-pacs`` installs them).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

requests = pytest.importorskip("requests")
pytest.importorskip("monailabel")

import browser  # noqa: E402  (tests/browser.py)
import orthanc  # noqa: E402  (tests/orthanc.py)
from monailabel_server import MonaiLabelServer  # noqa: E402
from processes import infer_parts  # noqa: E402

if orthanc.missing():
    pytest.skip(f"PACS tests skipped: {orthanc.missing()}", allow_module_level=True)

import pydicom  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from shared_paths import SHARED  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "monailabel_app"))
from lib.datastores.series import write_series  # noqa: E402

STARTUP_S = 120
PHANTOMS = 4
CHAOS = SHARED / "data" / "CHAOST2" / "chaos_MR_T2_normalized"


class Pacs:
    """What the module's fixture set up: the PACS, the server, the series and the user's SEG."""

    def __init__(self, orthanc_, url, tmp, log):
        self.orthanc, self.url, self.tmp, self.log = orthanc_, url, tmp, log
        self.series: dict[str, object] = {}     # name -> SeriesInfo
        self.gt: dict[str, Path] = {}           # name -> ground-truth label file (NIfTI)
        self.source: dict[str, Path] = {}       # name -> the image file the series was written from
        self.user_seg: dict[str, str] = {}      # name -> SEG series UID drawn "in OHIF"
        self.drawn: dict[str, dict[int, list[int]]] = {}

    def grid(self, name: str):
        """The series as a SimpleITK image read from its own DICOM files (the geometry oracle)."""
        return sitk.ReadImage([str(f) for f in self.series[name].files])

    def infer(self, series_uid: str, params: dict | None = None, timeout=180):
        return requests.post(f"{self.url}/infer/fewshot", params={"image": series_uid},
                             data={"params": json.dumps(params or {})}, timeout=timeout)

    def seg_count(self) -> int:
        return len(self.orthanc.series("SEG"))

    def fetch(self, series_uid: str) -> pydicom.Dataset:
        from dicomweb_client import DICOMwebClient

        client = DICOMwebClient(self.orthanc.dicomweb)
        found = client.search_for_series(search_filters={"SeriesInstanceUID": series_uid})
        study = found[0]["0020000D"]["Value"][0]
        return client.retrieve_series(study, series_uid)[0]


def write_gap_series(image_file: Path, out: Path, study_uid: str, missing: int):
    """The volume without slice ``missing``: every other slice where it was (12 mm gap there)."""
    image = sitk.ReadImage(str(image_file))
    array = sitk.GetArrayFromImage(image)
    keep = [k for k in range(array.shape[0]) if k != missing]
    thinner = sitk.GetImageFromArray(array[keep])
    thinner.SetSpacing(image.GetSpacing())
    thinner.SetDirection(image.GetDirection())
    thinner.SetOrigin(image.GetOrigin())
    positions = [image.TransformIndexToPhysicalPoint((0, 0, k)) for k in keep]
    return write_series(thinner, out, "PH4", study_uid=study_uid, series_description="PH4 with a gap",
                        series_number=2, positions=positions)


def _result(response, tmp: Path):
    params, path = infer_parts(response, tmp)
    return params, sitk.ReadImage(str(path))


def _same_geometry(image, grid):
    assert image.GetSize() == grid.GetSize()
    np.testing.assert_allclose(image.GetOrigin(), grid.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(image.GetSpacing(), grid.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), grid.GetDirection(), atol=1e-5)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    from scripts.data.phantoms import write_phantom_dataset
    from scripts.network.model_file import save_checkpoint_file
    from scripts.network.presets import build_segmenter

    tmp = tmp_path_factory.mktemp("pacs")
    server_pacs = orthanc.Orthanc(tmp / "orthanc").start()
    server = None
    try:
        phantoms = write_phantom_dataset(tmp / "phantoms", n_volumes=PHANTOMS, size=64, depth=10, seed=0)
        state = Pacs(server_pacs, None, tmp, tmp / "server" / "server.log")
        for pid in range(1, PHANTOMS + 1):
            name = f"phantom_{pid}"
            state.source[name], state.gt[name] = phantoms / f"image_{pid}.nii.gz", phantoms / f"label_{pid}.nii.gz"
            state.series[name] = write_series(state.source[name], tmp / "dicom" / name, f"PH{pid}")
        state.series["gap"] = write_gap_series(state.source["phantom_4"], tmp / "dicom" / "gap",
                                               state.series["phantom_4"].study_uid, missing=5)
        if (CHAOS / "image_1.nii.gz").is_file():  # a real volume: 256x256x37, left-handed NIfTI
            state.source["chaos_1"], state.gt["chaos_1"] = CHAOS / "image_1.nii.gz", CHAOS / "label_1.nii.gz"
            state.series["chaos_1"] = write_series(state.source["chaos_1"], tmp / "dicom" / "chaos_1", "CHAOS1")
        for info in state.series.values():
            server_pacs.upload(info.files)

        # the user's label, saved from OHIF: liver (segment 1) on two slices, spleen (2) on one
        grid = state.grid("phantom_1")
        gt = orthanc.on_grid(state.gt["phantom_1"], grid)
        liver, drawn_liver = orthanc.draw(gt, {1: 1}, 2)
        spleen, drawn_spleen = orthanc.draw(gt, {2: 4}, 1)
        state.user_label = np.where(spleen > 0, spleen, liver)
        state.drawn["phantom_1"] = {**drawn_liver, **drawn_spleen}
        seg = orthanc.ohif_seg(state.series["phantom_1"].files, grid, state.user_label, {1: "liver", 2: "spleen"})
        server_pacs.upload_dataset(seg)
        state.user_seg["phantom_1"] = str(seg.SeriesInstanceUID)

        checkpoint = tmp / "model" / "tiny.pt"
        save_checkpoint_file(build_segmenter(preset="tiny"), checkpoint)
        server = MonaiLabelServer(server_pacs.dicomweb, tmp / "server",
                                  {"checkpoint": checkpoint, "max_shots": 2, "pacs_timeout": 3},
                                  env={"MONAI_LABEL_DICOMWEB_SEARCH_FILTER": json.dumps({"Modality": "MR"})})
        state.url = server.start(STARTUP_S).url
        yield state
    finally:
        if server is not None:
            server.stop()
        server_pacs.stop()


def test_series_in_the_pacs_keep_their_geometry(pacs):
    """What the server converts from the PACS lies where the source volume lay, voxel for voxel."""
    from dicomweb_client import DICOMwebClient
    from monailabel.datastore.utils.convert import dicom_to_nifti
    from monailabel.datastore.utils.dicom import dicom_web_download_series

    client = DICOMwebClient(pacs.orthanc.dicomweb)
    listed = {s["0020000E"]["Value"][0] for s in pacs.orthanc.series("MR")}
    assert {info.series_uid for info in pacs.series.values()} <= listed
    for name in ("phantom_1", "chaos_1") if "chaos_1" in pacs.series else ("phantom_1",):
        folder = pacs.tmp / "download" / name
        dicom_web_download_series(None, pacs.series[name].series_uid, str(folder), client)
        served = sitk.ReadImage(dicom_to_nifti(str(folder)))
        source = sitk.ReadImage(str(pacs.source[name]))
        # the same voxels at the same physical points (a left-handed NIfTI comes back slice-reversed)
        back = sitk.Resample(source, served, sitk.Transform(), sitk.sitkNearestNeighbor)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(served))
        assert served.GetSize() == source.GetSize()
        np.testing.assert_allclose(sorted(served.GetSpacing()), sorted(source.GetSpacing()), rtol=1e-5)


def test_ohif_flow_seg_in_seg_out(pacs):
    series = pacs.series["phantom_1"]
    before = pacs.seg_count()
    params, result = _result(pacs.infer(series.series_uid), pacs.tmp)
    grid = pacs.grid("phantom_1")
    _same_geometry(result, grid)
    support = params["support"]
    assert support["source"] == "saved_label" and support["image"] == series.series_uid
    assert support["labels"] == {"liver": 1, "spleen": 2}  # the SEG's segment numbers and labels
    assert support["support_slices"] == {"liver": pacs.drawn["phantom_1"][1], "spleen": pacs.drawn["phantom_1"][2]}
    out = sitk.GetArrayFromImage(result).transpose(2, 1, 0)
    for z in pacs.drawn["phantom_1"][1] + pacs.drawn["phantom_1"][2]:  # drawn slices come back as drawn
        np.testing.assert_array_equal(out[:, :, z], pacs.user_label[:, :, z])

    stored = params["stored_seg"]
    assert stored and stored["references"] == series.series_uid
    assert pacs.seg_count() == before + 1
    seg = pacs.fetch(stored["SeriesInstanceUID"])
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == series.study_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    assert seg.FrameOfReferenceUID == series.frame_of_reference_uid
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    assert labels == {1: "liver", 2: "spleen"}
    assert {str(s.SegmentAlgorithmType) for s in seg.SegmentSequence} == {"AUTOMATIC"}

    # read back by another reader (pydicom-seg's): the series' geometry, the support's values, our voxels
    import pydicom_seg

    read = pydicom_seg.MultiClassReader().read(seg)
    back = read.image
    np.testing.assert_allclose(back.GetSpacing(), grid.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), grid.GetDirection(), atol=1e-5)
    start = np.asarray(grid.TransformPhysicalPointToContinuousIndex(back.GetOrigin()))
    np.testing.assert_allclose(start, np.rint(start), atol=1e-3)  # its first frame lies on a slice of the series
    on_grid = sitk.GetArrayFromImage(sitk.Resample(back, grid, sitk.Transform(), sitk.sitkNearestNeighbor))
    np.testing.assert_array_equal(on_grid.transpose(2, 1, 0), out)
    assert set(np.unique(out)) - {0} <= {1, 2}

    # the stored result is not the user's label: the next call still learns from the OHIF SEG
    params, _ = _result(pacs.infer(series.series_uid, {"store_result": False}), pacs.tmp)
    assert params["support"]["label"] == pacs.user_seg["phantom_1"]
    assert params["stored_seg"] is None and pacs.seg_count() == before + 1


def test_cross_patient_with_a_labelled_study(pacs):
    source, target = pacs.series["phantom_1"], pacs.series["phantom_3"]
    params, result = _result(pacs.infer(target.series_uid, {"support_image": source.study_uid}), pacs.tmp)
    _same_geometry(result, pacs.grid("phantom_3"))
    assert params["support"]["source"] == "support_image"
    assert params["support"]["image"] == source.series_uid  # the study's labelled series
    assert params["support"]["drawn_slices"] == []
    seg = pacs.fetch(params["stored_seg"]["SeriesInstanceUID"])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == target.series_uid
    assert seg.StudyInstanceUID == target.study_uid
    assert {str(s.SegmentLabel) for s in seg.SegmentSequence} <= {"liver", "spleen"}


def test_put_label_stores_a_seg_the_task_then_uses(pacs):
    """MONAI Label's own save (OHIF's panel, Slicer): PUT /datastore/label lands in the PACS as a SEG."""
    series = pacs.series["phantom_2"]
    grid = pacs.grid("phantom_2")
    gt = orthanc.on_grid(pacs.gt["phantom_2"], grid)
    z = [k for k in range(gt.shape[2]) if (gt[:, :, k] == 2).any()][0]
    label = np.zeros_like(gt)
    label[:, :, z][gt[:, :, z] == 2] = 1
    image = sitk.GetImageFromArray(np.ascontiguousarray(label.transpose(2, 1, 0)).astype(np.uint8))
    image.CopyInformation(grid)
    path = pacs.tmp / "put_label.nii.gz"
    sitk.WriteImage(image, str(path))
    before = pacs.seg_count()
    response = requests.put(f"{pacs.url}/datastore/label", params={"image": series.series_uid, "tag": "final"},
                            data={"params": json.dumps({"label_info": [{"name": "right_kidney", "idx": 1}]})},
                            files={"label": ("label.nii.gz", path.read_bytes(), "application/octet-stream")}, timeout=60)
    assert response.status_code == 200, response.text[:1000]
    assert pacs.seg_count() == before + 1
    seg_uid = next(s["0020000E"]["Value"][0] for s in pacs.orthanc.series("SEG")
                   if pacs.fetch(s["0020000E"]["Value"][0]).ReferencedSeriesSequence[0].SeriesInstanceUID
                   == series.series_uid)
    seg = pacs.fetch(seg_uid)
    assert [str(s.SegmentLabel) for s in seg.SegmentSequence] == ["right_kidney"]
    assert str(seg.SegmentSequence[0].SegmentAlgorithmType) == "MANUAL"
    params, _ = _result(pacs.infer(series.series_uid, {"store_result": False}), pacs.tmp)
    assert params["support"]["label"] == seg_uid and params["support"]["labels"] == {"right_kidney": 1}
    assert params["support"]["support_slices"] == {"right_kidney": [z]}


@pytest.mark.parametrize("case", ["seg_of_another_series", "unknown_seg", "gap_in_series", "unknown_series",
                                  "not_a_uid"])
def test_user_errors_answer_4xx_and_store_nothing(pacs, case):
    before = pacs.orthanc.instance_count()
    if case == "seg_of_another_series":
        response = pacs.infer(pacs.series["phantom_3"].series_uid, {"support_seg": pacs.user_seg["phantom_1"]})
        status, words = 422, f"labels series {pacs.series['phantom_1'].series_uid}"
    elif case == "unknown_seg":
        response, status, words = pacs.infer(pacs.series["phantom_3"].series_uid, {"support_seg": "1.2.3.4"}), 404, "1.2.3.4"
    elif case == "gap_in_series":
        response = pacs.infer(pacs.series["gap"].series_uid, {"support_image": pacs.series["phantom_1"].series_uid})
        status, words = 422, "12.00 mm after slice 5"
    elif case == "unknown_series":
        response, status, words = pacs.infer("1.2.826.0.1.999"), 404, "not in the PACS"
    else:
        response, status, words = pacs.infer("image_1"), 404, "not a DICOM UID"
    assert response.status_code == status, response.text[:1000]
    assert words in response.json()["detail"]
    assert pacs.orthanc.instance_count() == before


SEG_FILTER = """
function ReceivedInstanceFilter(dicom, origin, info)
  return dicom.Modality ~= 'SEG'
end
"""


def test_a_failing_pacs_gives_424_and_nothing_half_written(pacs):
    series = pacs.series["phantom_1"].series_uid  # cached by the server: the task itself meets the PACS
    before = pacs.orthanc.instance_count()
    pacs.orthanc.pause()  # frozen: connections open, nothing answers
    try:
        start = time.time()
        response = pacs.infer(series, timeout=120)
        waited = time.time() - start
    finally:
        pacs.orthanc.resume()
    assert response.status_code == 424, response.text[:1000]
    detail = response.json()["detail"]
    assert "does not answer (timed out)" in detail and pacs.orthanc.dicomweb in detail and series in detail
    assert waited < 60
    pacs.orthanc.stop()  # down: connections refused
    try:
        response = pacs.infer(series, timeout=120)
        assert response.status_code == 424, response.text[:1000]
        assert "refused" in response.json()["detail"]
        # up, but a rule drops every SEG while answering STOW with success: the call must not claim it stored one
        pacs.orthanc.start(lua=SEG_FILTER)
        response = pacs.infer(series, timeout=180)
        assert response.status_code == 424, response.text[:1000]
        assert "does not hold it" in response.json()["detail"]
    finally:
        pacs.orthanc.stop()
        pacs.orthanc.start()  # same storage, no rule
    assert pacs.orthanc.instance_count() == before  # nothing half-written
    params, _ = _result(pacs.infer(series, {"store_result": False}), pacs.tmp)
    assert params["support"]["label"] == pacs.user_seg["phantom_1"]


def test_ohif_viewer_shows_the_series_and_our_seg(pacs):
    """Headless Chromium on the OHIF viewer MONAI Label serves, reading the PACS through its proxy."""
    if browser.missing():
        pytest.skip(f"viewer test skipped: {browser.missing()}")
    series = pacs.series["phantom_1"]
    params, _ = _result(pacs.infer(series.series_uid), pacs.tmp)  # a result SEG of ours to show
    assert params["stored_seg"]
    z = pacs.drawn["phantom_1"][1][0]  # a drawn liver slice: there the result is the user's liver
    chromium = browser.Chromium(pacs.tmp / "chromium", orthanc.free_port()).start()
    try:
        got = browser.ohif_show_seg(chromium, pacs.url, series.study_uid, slices=10,
                                    seg_description="SD-FSMIS few-shot", slice_index=z, out_dir=pacs.tmp)
    finally:
        chromium.stop()
    assert got["study_opened"], got
    assert got["image_rendered"], got
    assert got["overlay_pixels_before"] == 0, got  # a grey image: nothing tinted before the SEG is loaded
    assert got["seg_opened"] and got["overlay_pixels"] > 100, got
    assert "liver" in got["panel_text"], got
