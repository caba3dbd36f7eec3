"""The figure ``monailabel_app/docs/ohif_pacs.png``: OHIF, served by MONAI Label, on a PACS study
with the few-shot result overlaid.

A real Orthanc (tests/orthanc.py) gets a CHAOS T2 volume as an MR series and, as the user's label,
the DICOM SEG OHIF would save (liver on two slices); a MONAI Label server with the app and the
shipped checkpoint (``bundle/models/model.pt``, compact + TAEF2) runs on it; one ``fewshot`` call
stores its result as a SEG; a headless Chromium (tests/browser.py) opens the study in the viewer at
``/ohif/``, loads that SEG and shows the slice, not drawn by the user, where the result covers the
most liver. Needs ../shared (data and TAEF2 weights), Orthanc with DICOMweb and Chromium.

    .venv/bin/python bench/ohif_screenshot.py [--patient 1] [--out monailabel_app/docs/ohif_pacs.png]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "monailabel_app")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patient", default="1")
    parser.add_argument("--out", default=str(REPO / "monailabel_app" / "docs" / "ohif_pacs.png"))
    args = parser.parse_args()

    import numpy as np
    import pydicom_seg
    import requests
    import SimpleITK as sitk

    import browser
    import orthanc
    from lib.datastores.series import write_series
    from monailabel_server import MonaiLabelServer
    from shared_paths import SHARED

    chaos = SHARED / "data" / "CHAOST2" / "chaos_MR_T2_normalized"
    weights = SHARED / "weights" / "taef2"
    for needed, why in ((chaos, "the CHAOS data"), (weights, "the TAEF2 weights")):
        if not needed.exists():
            sys.exit(f"cannot run: {why} are not at {needed}")
    for reason in (orthanc.missing(), browser.missing()):
        if reason:
            sys.exit(f"cannot run: {reason}")

    work = Path(tempfile.mkdtemp(prefix="ohif_screenshot_"))
    pacs = orthanc.Orthanc(work / "orthanc").start()
    server = chromium = None
    try:
        series = write_series(chaos / f"image_{args.patient}.nii.gz", work / "dicom", f"CHAOS{args.patient}")
        pacs.upload(series.files)
        grid = sitk.ReadImage([str(f) for f in series.files])
        label, drawn = orthanc.draw(orthanc.on_grid(chaos / f"label_{args.patient}.nii.gz", grid), {1: 1}, 2)
        pacs.upload_dataset(orthanc.ohif_seg(series.files, grid, label, {1: "liver"}))
        server = MonaiLabelServer(pacs.dicomweb, work / "server", {
            "checkpoint": REPO / "bundle" / "models" / "model.pt", "autoencoder_path": weights},
            env={"MONAI_LABEL_DICOMWEB_SEARCH_FILTER": json.dumps({"Modality": "MR"})}).start()
        response = requests.post(f"{server.url}/infer/fewshot", params={"image": series.series_uid, "output": "json"},
                                 data={"params": "{}"}, timeout=1800)
        response.raise_for_status()
        result = response.json()
        print(f"few-shot call: {result['latencies']['total']:.1f}s, support slices {result['support']['support_slices']}, "
              f"stored SEG {result['stored_seg']['SeriesInstanceUID']}")

        # the slice to show: the one, not drawn by the user, where the stored result has the most liver
        from dicomweb_client import DICOMwebClient

        seg = DICOMwebClient(pacs.dicomweb).retrieve_series(series.study_uid, result["stored_seg"]["SeriesInstanceUID"])[0]
        stored = sitk.Resample(pydicom_seg.MultiClassReader().read(seg).image, grid, sitk.Transform(),
                               sitk.sitkNearestNeighbor)
        area = (sitk.GetArrayFromImage(stored) == 1).sum(axis=(1, 2))
        area[drawn[1]] = -1
        shown = int(np.argmax(area))

        chromium = browser.Chromium(work / "chromium", orthanc.free_port()).start()
        got = browser.ohif_show_seg(chromium, server.url, series.study_uid, slices=grid.GetSize()[2],
                                    seg_description="SD-FSMIS few-shot", slice_index=shown, out_dir=work)
        print(json.dumps({k: v for k, v in got.items() if k != "panel_text"}, indent=1))
        if got["screenshots"]:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(got["screenshots"][-1], args.out)
            print(f"slice {shown} (drawn: {drawn[1]}) -> {args.out}")
    finally:
        for part in (chromium, server, pacs):
            if part is not None:
                part.stop()


if __name__ == "__main__":
    main()
