"""One few-shot call through a PACS beside the same call on a local folder, over HTTP, end to end.

Two MONAI Label servers with the app, one after the other, on the same data: a 256x256x40 phantom
whose liver is drawn on 3 slices (the ``compact`` preset, untrained weights: the timing is the
same). The call is OHIF's: ``POST /infer/fewshot?image=<id>`` with no upload, the task finding the
saved label itself.

- local folder: the phantom as NIfTI, the label saved with ``PUT /datastore/label``;
- PACS: a real Orthanc with DICOMweb (tests/orthanc.py) holding the phantom as an MR series and the
  label as the DICOM SEG OHIF would save; the server runs on ``--studies <orthanc>/dicom-web`` and
  stores each result back as a SEG (also timed without storing).

"first" is the first call on the image (the PACS server downloads and converts the series and the
SEG then), "repeated" the median of the following ones. Run with the machine's 2 cores:

    .venv/bin/python bench/bench_pacs_latency.py [--runs 3] [--depth 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "monailabel_app")]
os.environ.setdefault("MPLCONFIGDIR", str(REPO / ".cache" / "matplotlib"))


def call(url: str, image: str, params: dict) -> tuple[float, dict]:
    import requests

    start = time.perf_counter()
    response = requests.post(f"{url}/infer/fewshot", params={"image": image, "output": "json"},
                             data={"params": json.dumps(params)}, timeout=900)
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise RuntimeError(f"call failed ({response.status_code}): {response.text[:500]}")
    return elapsed, response.json()


def measure(setups: dict, runs: int) -> dict:
    """For each setup (name -> (server URL, image id, params)): the first call, then ``runs`` rounds
    of one repeated call per setup, interleaved so that a shared machine's load falls on all alike.
    Of the repeated calls: the median over HTTP and the medians of the task's support step ("pre":
    finding and reading the label), its network ("infer"), and what lies outside the task's own
    steps ("outside": the endpoint, fetching the image from the datastore, storing the result SEG)."""
    first = {name: call(*setup) for name, setup in setups.items()}
    repeated = {name: [] for name in setups}
    for _ in range(runs):
        for name, setup in setups.items():
            repeated[name].append(call(*setup))
    median = statistics.median
    urls = [setup[0] for setup in setups.values()]
    cold = {name: urls.index(setup[0]) == list(setups).index(name) for name, setup in setups.items()}  # server's 1st
    return {name: {"first": first[name][0] if cold[name] else None, "repeated": median([t for t, _ in calls]), "runs": [t for t, _ in calls],
                   "pre": median([r["latencies"]["pre"] for _, r in calls]),
                   "infer": median([r["latencies"]["infer"] for _, r in calls]),
                   "outside": median([t - r["latencies"]["total"] for t, r in calls]),
                   "stored": bool(first[name][1].get("stored_seg"))}
            for name, calls in repeated.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--depth", type=int, default=40)
    args = parser.parse_args()

    import numpy as np
    import requests
    import SimpleITK as sitk

    import orthanc
    from lib.datastores.series import write_series
    from monailabel_server import MonaiLabelServer
    from scripts.data.phantoms import write_phantom_dataset
    from scripts.network.model_file import save_checkpoint_file
    from scripts.network.presets import build_segmenter

    if orthanc.missing():
        sys.exit(f"cannot run: {orthanc.missing()}")
    work = Path(tempfile.mkdtemp(prefix="bench_pacs_"))
    data = write_phantom_dataset(work / "data", n_volumes=1, size=256, depth=args.depth, seed=0)
    checkpoint = work / "compact.pt"
    save_checkpoint_file(build_segmenter(preset="compact"), checkpoint)
    conf = {"checkpoint": checkpoint, "labels": "phantom", "prediction_record_dir": "none"}

    # the series in the PACS, its grid, and the label drawn on it (3 liver slices)
    pacs = orthanc.Orthanc(work / "orthanc").start()
    try:
        series = write_series(data / "image_1.nii.gz", work / "dicom", "BENCH1")
        pacs.upload(series.files)
        grid = sitk.ReadImage([str(f) for f in series.files])
        label, drawn = orthanc.draw(orthanc.on_grid(data / "label_1.nii.gz", grid), {1: 1}, 3)
        pacs.upload_dataset(orthanc.ohif_seg(series.files, grid, label, {1: "liver"}))

        # local folder: the same image and label (the phantom's grid is the series' grid)
        studies = work / "studies"
        studies.mkdir()
        (studies / "image_1.nii.gz").symlink_to(data / "image_1.nii.gz")
        image = sitk.GetImageFromArray(np.ascontiguousarray(label.transpose(2, 1, 0)).astype(np.uint8))
        image.CopyInformation(sitk.ReadImage(str(data / "image_1.nii.gz")))
        sitk.WriteImage(image, str(work / "label.nii.gz"))
        local = MonaiLabelServer(str(studies), work / "local", conf).start()
        server = None
        try:
            saved = requests.put(f"{local.url}/datastore/label", params={"image": "image_1", "tag": "final"},
                                 data={"params": json.dumps({"label_info": [{"name": "liver", "idx": 1}]})},
                                 files={"label": ("label.nii.gz", (work / "label.nii.gz").read_bytes())}, timeout=60)
            saved.raise_for_status()
            server = MonaiLabelServer(pacs.dicomweb, work / "pacs_server", conf,
                                      env={"MONAI_LABEL_DICOMWEB_SEARCH_FILTER": json.dumps({"Modality": "MR"})}).start()
            rows = measure({"local folder": (local.url, "image_1", {}),
                            "PACS, result stored as SEG": (server.url, series.series_uid, {}),
                            "PACS, result not stored": (server.url, series.series_uid, {"store_result": False})},
                           args.runs)
        finally:
            for running in (local, server):
                if running is not None:
                    running.stop()
    finally:
        pacs.stop()

    import torch

    print(f"phantom 256x256x{args.depth}, liver drawn on slices {drawn[1]}, compact preset, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    print(f"{'':28s} {'first call':>10s} {'repeated':>9s} | repeated, medians: {'pre':>5s} {'infer':>6s} "
          f"{'outside':>7s} | runs (s)")
    for name, row in rows.items():
        first = f"{row['first']:9.2f}s" if row["first"] is not None else f"{'-':>10s}"
        print(f"{name:28s} {first} {row['repeated']:8.2f}s | {'':19s}{row['pre']:5.2f} {row['infer']:6.2f} "
              f"{row['outside']:7.2f} | {[round(x, 2) for x in row['runs']]}"
              f"{'  (SEG stored)' if row['stored'] else ''}")


if __name__ == "__main__":
    main()
