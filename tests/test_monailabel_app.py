"""The MONAI Label app through a real server: OHIF, Slicer and cross-patient flows, errors, the client.

One server for the module (a tiny untrained checkpoint, four 64x64x10 phantoms); it is stopped by
its PID when the module ends, failed or not. Calls are kept cheap (one or two organs per call):
the server runs the model for real on the CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

requests = pytest.importorskip("requests")
pytest.importorskip("monailabel")

from processes import infer_parts, stop_process  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "monailabel_app"
LABELS = {"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}
STARTUP_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, tmp: Path, phantoms: Path, studies: Path, checkpoint: Path, log: Path):
        self.url, self.tmp, self.phantoms, self.studies, self.checkpoint, self.log = url, tmp, phantoms, studies, checkpoint, log

    def gt(self, pid: int) -> np.ndarray:
        return np.asarray(nib.load(self.phantoms / f"label_{pid}.nii.gz").dataobj).astype(np.int16)

    def image(self, pid: int):
        return nib.load(self.studies / f"image_{pid}.nii.gz")

    def write_label(self, pid: int, array: np.ndarray, name: str) -> Path:
        ref = self.image(pid)
        path = self.tmp / name
        nib.save(nib.Nifti1Image(array.astype(np.int16), ref.affine, ref.header), path)
        return path

    def drawn(self, pid: int, keep: dict[int, list[int]], name: str) -> Path:
        """A label of image `pid` holding organ value v only on slices keep[v] (ground truth there)."""
        gt = self.gt(pid)
        out = np.zeros_like(gt)
        for value, slices in keep.items():
            for z in slices:
                out[:, :, z] = np.where(gt[:, :, z] == value, value, out[:, :, z])
        return self.write_label(pid, out, name)

    def organ_slices(self, pid: int, value: int) -> list[int]:
        gt = self.gt(pid)
        return [z for z in range(gt.shape[2]) if (gt[:, :, z] == value).any()]

    def infer(self, model: str, image: str, params: dict | None = None, label: Path | None = None, timeout=120):
        files = {"label": (label.name, label.read_bytes(), "application/octet-stream")} if label else None
        return requests.post(f"{self.url}/infer/{model}", params={"image": image},
                             data={"params": json.dumps(params or {})}, files=files, timeout=timeout)

    def save_final(self, image: str, label: Path, params: dict | None = None):
        response = requests.put(f"{self.url}/datastore/label", params={"image": image, "tag": "final"},
                                data={"params": json.dumps(params or {})},
                                files={"label": (label.name, label.read_bytes(), "application/octet-stream")}, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()


def _result(response, tmp: Path) -> tuple[dict, nib.Nifti1Image]:
    """The multipart answer of /infer: (result JSON, label NIfTI)."""
    params, path = infer_parts(response, tmp)
    return params, nib.load(path)


def _assert_geometry(result: nib.Nifti1Image, image: nib.Nifti1Image):
    assert result.shape == image.shape
    np.testing.assert_allclose(result.affine, image.affine, atol=1e-4)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from scripts.data.phantoms import write_phantom_dataset
    from scripts.network.model_file import save_checkpoint_file
    from scripts.network.presets import build_segmenter

    tmp = tmp_path_factory.mktemp("monailabel")
    phantoms = write_phantom_dataset(tmp / "phantoms", n_volumes=4, size=64, depth=10, seed=0)
    studies = tmp / "studies"
    studies.mkdir()
    for pid in range(1, 5):
        shutil.copy(phantoms / f"image_{pid}.nii.gz", studies / f"image_{pid}.nii.gz")
    checkpoint = tmp / "model" / "tiny.pt"
    save_checkpoint_file(build_segmenter(preset="tiny"), checkpoint)

    log_config = tmp / "logging.json"
    log_config.write_text(json.dumps({
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"simple": {"format": "[%(asctime)s] [%(levelname)s] (%(name)s) %(message)s"}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "simple"}},
        "root": {"level": "INFO", "handlers": ["console"]},
    }))
    port = _free_port()
    env = {**os.environ, "MONAI_LABEL_SESSION_PATH": str(tmp / "sessions"), "MPLCONFIGDIR": str(tmp / "mpl"),
           "PYTHONUNBUFFERED": "1"}
    log = tmp / "server.log"
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP), "--studies", str(studies),
           "--host", "127.0.0.1", "--port", str(port), "--log_config", str(log_config),
           "--conf", "checkpoint", str(checkpoint), "--conf", "labels", "phantom", "--conf", "max_shots", "2"]
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(tmp))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + STARTUP_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/info/", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"server not up after {STARTUP_S}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield Server(url, tmp, phantoms, studies, checkpoint, log)
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def liver_1(server):
    """Image 1's final label: the liver drawn on two slices (the OHIF flow's saved label)."""
    z = server.organ_slices(1, LABELS["liver"])
    drawn = [z[len(z) // 3], z[2 * len(z) // 3]]
    path = server.drawn(1, {LABELS["liver"]: drawn}, "liver_1.nii.gz")
    server.save_final("image_1", path)
    return path, drawn


def test_info_describes_the_task(server):
    info = requests.get(f"{server.url}/info/", timeout=10).json()
    models = info["models"]
    assert models["fewshot"]["type"] == "segmentation"
    assert models["fewshot_scribbles"]["type"] == "scribbles"
    for model in models.values():
        assert model["dimension"] == 3
        assert model["labels"] == LABELS
        assert {"threshold", "max_shots", "support_image", "volume_mode"} <= set(model["config"])
        assert model["config"]["volume_mode"] == ["propagate", "nearest"]  # a drop-down: the default first
        assert "sd15" in model["description"] and "minute" in model["description"]
    assert "fewshot" in info["trainers"]
    assert info["labels"] == list(LABELS)


def test_ohif_flow_uses_the_saved_label(server, liver_1):
    label_path, drawn = liver_1
    params, result = _result(server.infer("fewshot", "image_1"), server.tmp)
    _assert_geometry(result, server.image(1))
    out = np.asarray(result.dataobj)
    assert set(np.unique(out)) <= {0, LABELS["liver"]}
    assert params["support"]["source"] == "saved_label"
    assert params["support"]["labels"] == {"liver": 1}
    assert params["label_names"] == {"liver": 1}
    support = np.asarray(nib.load(label_path).dataobj)
    for z in drawn:  # in-volume: the drawn slices come back as drawn
        np.testing.assert_array_equal(out[:, :, z], support[:, :, z])
    assert params["volume_mode"] == "propagate"


def test_the_in_volume_mode_is_a_request_option(server, liver_1):
    _, drawn = liver_1
    params, nearest = _result(server.infer("fewshot", "image_1", {"volume_mode": "nearest", "threshold": -2.0}),
                              server.tmp)
    assert params["volume_mode"] == "nearest"
    out = np.asarray(nearest.dataobj)
    # every slice is served from the drawn ones, whatever lies between: a threshold under every score fills them all
    assert all(out[:, :, z].any() for z in range(out.shape[2]))
    params, _ = _result(server.infer("fewshot", "image_2", {"support_image": "image_1"}), server.tmp)
    assert params["volume_mode"] is None  # another image: only the nearest-slice matching applies
    response = server.infer("fewshot", "image_1", {"volume_mode": "sideways"})
    assert response.status_code == 400 and "volume_mode" in response.json()["detail"]


def test_predicted_slices_are_not_shots_unless_marked(server, liver_1):
    _, drawn = liver_1
    params, result = _result(server.infer("fewshot", "image_1", {"threshold": -2.0}), server.tmp)
    out = np.asarray(result.dataobj)
    predicted = [z for z in range(out.shape[2]) if z not in drawn and out[:, :, z].any()]
    assert predicted, "a threshold below every score fills the other slices"
    # the user accepts the whole result and saves it: only the drawn slices are shots next time
    saved = server.write_label(1, out, "accepted_1.nii.gz")
    server.save_final("image_1", saved)
    try:
        params, _ = _result(server.infer("fewshot", "image_1"), server.tmp)
        assert params["support"]["excluded_predicted_slices"] == predicted
        assert params["support"]["support_slices"] == {"liver": drawn}
        params, _ = _result(server.infer("fewshot", "image_1", {"support_slices": "all"}), server.tmp)
        assert params["support"]["excluded_predicted_slices"] == []
        assert params["support"]["support_slices"]["liver"] == sorted(drawn + predicted)
    finally:
        server.save_final("image_1", liver_1[0])


def test_slicer_flow_uploads_the_labelmap(server):
    # Slicer's scribbles panel: every segment exported as value idx+1, with label_info
    liver, spleen = server.organ_slices(2, 1), server.organ_slices(2, 4)
    label = np.zeros_like(server.gt(2))
    gt = server.gt(2)
    label[:, :, liver[len(liver) // 2]][gt[:, :, liver[len(liver) // 2]] == 1] = 1
    label[:, :, spleen[len(spleen) // 2]][gt[:, :, spleen[len(spleen) // 2]] == 4] = 2
    scribble_slice = next(z for z in range(label.shape[2]) if not label[:, :, z].any())
    label[20:30, 20:30, scribble_slice] = 3   # foreground_scribbles
    label[0:5, 0:5, liver[len(liver) // 2]] = 4  # background_scribbles on a drawn slice
    upload = server.write_label(2, label, "slicer_2.nii.gz")
    label_info = [{"name": "liver", "id": 1}, {"name": "spleen", "id": 2},
                  {"name": "foreground_scribbles", "id": 3}, {"name": "background_scribbles", "id": 4}]

    params, result = _result(server.infer("fewshot_scribbles", "image_2", {
        "label_info": label_info, "selected_label_name": "spleen", "roi": []}, upload), server.tmp)
    _assert_geometry(result, server.image(2))
    assert set(np.unique(np.asarray(result.dataobj))) <= {0, 2}
    assert params["support"]["source"] == "upload"
    assert params["support"]["labels"] == {"spleen": 2}

    params, result = _result(server.infer("fewshot_scribbles", "image_2", {"label_info": label_info}, upload),
                             server.tmp)
    out = np.asarray(result.dataobj)
    assert set(np.unique(out)) <= {0, 1, 2}
    assert params["support"]["labels"] == {"liver": 1, "spleen": 2}
    assert set(params["label_names"]) <= {"liver", "spleen"}
    assert params["support"]["drawn_slices"] == sorted({liver[len(liver) // 2], spleen[len(spleen) // 2]})
    assert not np.isin(out, [3, 4]).any(), "scribbles are not organs"
    z = liver[len(liver) // 2]
    np.testing.assert_array_equal(out[:, :, z], np.where(np.isin(label[:, :, z], [1, 2]), label[:, :, z], 0))


def test_cross_patient_flow(server, liver_1):
    params, result = _result(server.infer("fewshot", "image_3", {"support_image": "image_1"}), server.tmp)
    _assert_geometry(result, server.image(3))
    assert set(np.unique(np.asarray(result.dataobj))) <= {0, LABELS["liver"]}
    assert params["support"]["source"] == "support_image"
    assert params["support"]["image"] == "image_1"
    assert params["support"]["drawn_slices"] == []


def test_ten_concurrent_calls_all_succeed(server, liver_1):
    def call(i):
        return server.infer("fewshot", "image_3" if i % 2 else "image_1", {"support_image": "image_1"}, timeout=300)

    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(call, range(10)))
    for response in responses:
        params, result = _result(response, server.tmp)
        assert set(np.unique(np.asarray(result.dataobj))) <= {0, LABELS["liver"]}


@pytest.mark.parametrize("case", ["no_label_anywhere", "only_scribbles", "shape_mismatch", "unknown_support",
                                  "support_without_label", "unknown_image", "bad_threshold", "bad_volume_mode",
                                  "unknown_organ"])
def test_user_errors_answer_4xx_with_a_message(server, case, liver_1):
    if case == "no_label_anywhere":
        response, status, words = server.infer("fewshot", "image_4"), 422, "no labelled slice"
    elif case == "only_scribbles":
        label = np.zeros(server.image(4).shape, np.int16)
        label[10:20, 10:20, 3] = 2
        upload = server.write_label(4, label, "scribbles_4.nii.gz")
        response = server.infer("fewshot_scribbles", "image_4", {"label_info": {"liver": 1, "foreground_scribbles": 2}}, upload)
        status, words = 422, "scribbles"
    elif case == "shape_mismatch":
        wrong = server.tmp / "wrong_shape.nii.gz"
        nib.save(nib.Nifti1Image(np.ones((64, 64, 7), np.int16), server.image(2).affine), wrong)
        response, status, words = server.infer("fewshot_scribbles", "image_2", {}, wrong), 422, "shape"
    elif case == "unknown_support":
        response, status, words = server.infer("fewshot", "image_4", {"support_image": "nope"}), 404, "nope"
    elif case == "support_without_label":
        response, status, words = server.infer("fewshot", "image_3", {"support_image": "image_4"}), 404, "no saved final label"
    elif case == "unknown_image":
        response, status, words = server.infer("fewshot", "no_such_image"), 404, "image not found"
    elif case == "bad_volume_mode":
        response, status, words = server.infer("fewshot", "image_1", {"volume_mode": 3}), 400, "volume_mode"
    elif case == "bad_threshold":
        response, status, words = server.infer("fewshot", "image_1", {"threshold": "high"}), 400, "threshold"
    else:
        response, status, words = server.infer("fewshot", "image_1", {"labels": ["pancreas"]}), 422, "pancreas"
    assert response.status_code == status, response.text[:1000]
    assert words in response.json()["detail"]


def test_missing_weights_answer_4xx(server, liver_1):
    hidden = server.checkpoint.with_suffix(".hidden")
    server.checkpoint.rename(hidden)
    try:
        response = server.infer("fewshot", "image_1")
        assert response.status_code == 424, response.text[:1000]
        assert "checkpoint not found" in response.json()["detail"]
    finally:
        hidden.rename(server.checkpoint)
    assert server.infer("fewshot", "image_1").status_code == 200  # and it recovers


def test_python_client(server, liver_1):
    from monailabel.client import MONAILabelClient
    from monailabel.client.client import MONAILabelClientException

    client = MONAILabelClient(server.url, tmpdir=str(server.tmp))
    assert "fewshot" in client.info()["models"]
    path = server.drawn(2, {LABELS["spleen"]: server.organ_slices(2, 4)[:1]}, "spleen_2.nii.gz")
    client.save_label("image_2", str(path), tag="final")
    result_file, params = client.infer("fewshot", "image_2", {})
    assert params["support"]["source"] == "saved_label" and params["support"]["labels"] == {"spleen": 4}
    _assert_geometry(nib.load(result_file), server.image(2))
    with pytest.raises(MONAILabelClientException, match="404"):
        client.infer("fewshot", "image_3", {"support_image": "nope"})


def test_conf_post_processing_keys_reach_the_segmenter(tmp_path):
    """``--conf keep_largest_3d false`` (a structure in several pieces) turns the 3D step off in the
    model the task builds, ``--conf component_3d largest`` keeps the largest component instead of
    the one on the labelled slices; unset, the checkpoint's own settings (on, support) hold."""
    sys.path.insert(0, str(APP))
    from lib.configs.fewshot import FewShot
    from scripts.network.model_file import save_checkpoint_file
    from scripts.network.presets import build_segmenter

    checkpoint = tmp_path / "tiny.pt"
    save_checkpoint_file(build_segmenter(preset="tiny"), checkpoint)
    for conf, expected in (({}, True), ({"keep_largest_3d": "false"}, False), ({"keep_largest_3d": "true"}, True)):
        task = FewShot()
        task.init("fewshot", str(tmp_path), {"checkpoint": str(checkpoint), **conf}, None)
        assert task.model.get("cpu").keep_largest_3d is expected
    for conf, expected in (({}, "support"), ({"component_3d": "largest"}, "largest")):
        task = FewShot()
        task.init("fewshot", str(tmp_path), {"checkpoint": str(checkpoint), **conf}, None)
        assert task.model.get("cpu").component_3d == expected
