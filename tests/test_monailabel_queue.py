"""The server under load (issue 40): it answers while inferences run, serves calls in order from a
bounded queue, and has the image encoded before the first call.

Two real servers on 127.0.0.1 with an untrained ``compact`` checkpoint (the shipped model's size:
a call takes seconds on 2 cores, as in use) and 256x256x40 phantoms:

- ``busy``: the app's defaults (a queue of 32, the most recent image warmed at start);
- ``narrow``: a queue of one call and no warm-up, to see refusals and a cold first call.
"""

from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

requests = pytest.importorskip("requests")
pytest.importorskip("monailabel")

from monailabel_server import MonaiLabelServer  # noqa: E402
from processes import infer_parts  # noqa: E402

LIVER = 1


def _drawn_liver(phantoms: Path, pid: int, out: Path) -> Path:
    """Image ``pid``'s liver on its middle slice only (the one-slice flow)."""
    gt = nib.load(phantoms / f"label_{pid}.nii.gz")
    label = np.asarray(gt.dataobj).astype(np.int16)
    slices = [z for z in range(label.shape[2]) if (label[:, :, z] == LIVER).any()]
    drawn = np.zeros_like(label)
    middle = slices[len(slices) // 2]
    drawn[:, :, middle] = np.where(label[:, :, middle] == LIVER, LIVER, 0)
    nib.save(nib.Nifti1Image(drawn, gt.affine), out)
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from scripts.data.phantoms import write_phantom_dataset
    from scripts.network.model_file import save_checkpoint_file
    from scripts.network.presets import build_segmenter

    root = tmp_path_factory.mktemp("queue")
    phantoms = write_phantom_dataset(root / "phantoms", n_volumes=3, size=256, depth=40, seed=0)
    checkpoint = root / "compact.pt"
    save_checkpoint_file(build_segmenter(preset="compact"), checkpoint)
    return root, phantoms, checkpoint


def _server(site, name: str, conf: dict) -> MonaiLabelServer:
    root, phantoms, checkpoint = site
    studies = root / name / "studies"
    studies.mkdir(parents=True)
    for age, pid in enumerate((2, 1, 3)):  # image_2 the most recently changed, image_3 the oldest
        image = studies / f"image_{pid}.nii.gz"
        image.write_bytes((phantoms / f"image_{pid}.nii.gz").read_bytes())
        os.utime(image, (time.time() - 3600 * age, time.time() - 3600 * age))
    server = MonaiLabelServer(str(studies), root / name, {"checkpoint": str(checkpoint), "labels": "phantom", **conf})
    server.start()
    try:
        label = _drawn_liver(phantoms, 1, root / name / "liver_1.nii.gz")
        response = requests.put(f"{server.url}/datastore/label", params={"image": "image_1", "tag": "final"},
                                files={"label": (label.name, label.read_bytes(), "application/octet-stream")},
                                timeout=60)
        assert response.status_code == 200, response.text
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def busy(site):
    server = _server(site, "busy", {"warm_images": "1"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def narrow(site):
    server = _server(site, "narrow", {"queue_size": "1", "warm_up": "false"})
    yield server
    server.stop()


def _fewshot(server: MonaiLabelServer, image: str = "image_1", params: dict | None = None):
    return requests.post(f"{server.url}/infer/fewshot", params={"image": image},
                         data={"params": json.dumps(params or {})}, timeout=600)


def _result(response, tmp: Path) -> dict:
    assert response.status_code == 200, response.text
    params, _ = infer_parts(response, tmp)
    return params


def _wait_for_log(server: MonaiLabelServer, pattern: str, timeout_s: float = 180) -> None:
    deadline = time.time() + timeout_s
    while not re.search(pattern, server.log.read_text()):
        assert time.time() < deadline, f"no {pattern!r} in the server log after {timeout_s}s"
        time.sleep(0.5)


def test_the_first_call_finds_the_image_encoded(busy, narrow, tmp_path):
    _wait_for_log(busy, r"warm-up: image_1\.nii\.gz encoded")  # its label was saved
    warm = _result(_fewshot(busy), tmp_path)
    assert {k: warm["latent_cache"][k] for k in ("hits", "misses", "slices_encoded")} == \
        {"hits": 1, "misses": 0, "slices_encoded": 0}
    cold = _result(_fewshot(narrow), tmp_path)  # the same call on a server that warms nothing
    assert cold["latent_cache"]["misses"] == 1
    assert 0 < cold["latent_cache"]["slices_encoded"] < 40  # only the slices the liver's walk reached

    # at start, only the most recently changed image (warm_images 1), untouched by anyone: image_2
    _wait_for_log(busy, r"warm-up: image_2\.nii\.gz encoded")
    assert not re.search(r"warm-up: image_3", busy.log.read_text())
    # a viewer opening an image warms it
    assert requests.get(f"{busy.url}/datastore/image", params={"image": "image_3"}, timeout=60).status_code == 200
    _wait_for_log(busy, r"warm-up: image_3\.nii\.gz encoded")
    other = _result(_fewshot(busy, "image_3", {"support_image": "image_1"}), tmp_path)
    assert other["latent_cache"]["misses"] == 0 and other["latent_cache"]["slices_encoded"] == 0


def test_the_server_answers_while_calls_run(busy, tmp_path):
    calls = 6
    with ThreadPoolExecutor(max_workers=calls) as pool:
        began = time.perf_counter()
        futures = [pool.submit(_fewshot, busy, "image_1", {"volume_mode": "nearest" if i % 2 else "propagate"})
                   for i in range(calls)]
        latencies = []
        while not all(f.done() for f in futures):
            t = time.perf_counter()
            assert requests.get(f"{busy.url}/info/", timeout=60).status_code == 200
            if not all(f.done() for f in futures):  # answered while calls were still running
                latencies.append(time.perf_counter() - t)
            time.sleep(0.2)
        busy_s = time.perf_counter() - began
        results = [_result(f.result(), tmp_path) for f in futures]
    assert busy_s > 3.0, f"the calls took {busy_s:.1f}s: too short to show the server staying free"
    assert len(latencies) >= 5
    assert max(latencies) < 1.0, f"/info/ took {max(latencies):.2f}s while inferences ran"
    assert [r["volume_mode"] for r in results] == ["nearest" if i % 2 else "propagate" for i in range(calls)]


def test_calls_are_served_in_order(busy, tmp_path):
    done: dict[int, float] = {}

    def call(i: int):
        response = _fewshot(busy, "image_1", {"threshold": 0.1 * i})
        done[i] = time.perf_counter()
        return response

    with ThreadPoolExecutor(max_workers=5) as pool:
        futures = []
        for i in range(5):
            futures.append(pool.submit(call, i))
            time.sleep(0.1)  # arrival order 0, 1, 2, ...
        results = [_result(f.result(), tmp_path) for f in futures]
    assert sorted(done, key=done.get) == list(range(5))
    assert [r["threshold"] for r in results] == pytest.approx([0.1 * i for i in range(5)])


def test_a_full_queue_answers_503_with_a_retry_hint(narrow, tmp_path):
    with ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(pool.map(lambda _: _fewshot(narrow), range(4)))
    refused = [r for r in responses if r.status_code == 503]
    served = [r for r in responses if r.status_code == 200]
    assert refused and served and len(refused) + len(served) == 4
    for response in refused:
        assert int(response.headers["Retry-After"]) >= 1
        assert "busy" in response.json()["detail"]
    _result(_fewshot(narrow), tmp_path)  # drained: the next call is served
