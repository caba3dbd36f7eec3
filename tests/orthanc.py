"""A real Orthanc PACS with its DICOMweb plugin for the tests and the benchmark.

Started on 127.0.0.1 on free ports with a throwaway configuration and storage folder, stopped by its
PID (``stop``; ``pause`` / ``resume`` freeze it with SIGSTOP / SIGCONT, a PACS that does not answer;
``start`` again reuses the same storage). Debian's ``orthanc`` and ``orthanc-dicomweb`` packages
provide it (``make setup-pacs``); ``missing()`` says what is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

from processes import stop_process

PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")


def _binary() -> str | None:
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if os.path.exists(p)), None)


def _plugin() -> str | None:
    for folder in PLUGIN_DIRS:
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if name.startswith("libOrthancDicomWeb.so"):
                return os.path.join(folder, name)
    return None


def missing() -> str | None:
    """Why no Orthanc with DICOMweb can be started here (None when one can)."""
    if _binary() is None:
        return "Orthanc is not installed (Debian package 'orthanc'; `make setup-pacs` installs it)"
    if _plugin() is None:
        return "Orthanc's DICOMweb plugin is not installed (Debian package 'orthanc-dicomweb'; `make setup-pacs`)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.process: subprocess.Popen | None = None
        storage = self.folder / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        self.config = self.folder / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "sdfsmis-test", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "Plugins": [_plugin()],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True,
                         "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
        }, indent=1))

    def start(self, timeout_s: float = 30, lua: str | None = None) -> "Orthanc":
        """Start (again, on the same storage); ``lua``: a Lua script for this run (e.g. a filter)."""
        config = json.loads(self.config.read_text())
        config.pop("LuaScripts", None)
        if lua:
            script = self.folder / "script.lua"
            script.write_text(lua)
            config["LuaScripts"] = [str(script)]
        self.config.write_text(json.dumps(config, indent=1))
        log = open(self.folder / "orthanc.log", "a")
        self.process = subprocess.Popen([_binary(), str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.process.returncode}): "
                                   f"{(self.folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{self.dicomweb}/studies", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc not up after {timeout_s}s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.resume()
        stop_process(self.process)

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)

    # ---- content ----------------------------------------------------------------------------
    def upload(self, files) -> None:
        """Store DICOM files through Orthanc's REST API (POST /instances)."""
        for path in files:
            response = requests.post(f"{self.url}/instances", data=Path(path).read_bytes(), timeout=30)
            response.raise_for_status()

    def upload_dataset(self, ds) -> None:
        from io import BytesIO

        import pydicom

        buffer = BytesIO()
        pydicom.dcmwrite(buffer, ds, write_like_original=False)
        response = requests.post(f"{self.url}/instances", data=buffer.getvalue(), timeout=30)
        response.raise_for_status()

    def series(self, modality: str | None = None) -> list[dict]:
        """QIDO-RS series (DICOM JSON), optionally of one modality."""
        params = {"Modality": modality} if modality else {}
        response = requests.get(f"{self.dicomweb}/series", params=params, timeout=30)
        response.raise_for_status()
        return response.json() if response.content else []

    def instance_count(self) -> int:
        return int(requests.get(f"{self.url}/statistics", timeout=30).json()["CountInstances"])


# ---- what a viewer stores -------------------------------------------------------------------------
def on_grid(label_file: str | Path, grid):
    """A NIfTI label resampled (nearest, no transform) onto a series' grid (a SimpleITK image), as (X, Y, Z)."""
    import numpy as np
    import SimpleITK as sitk

    label = sitk.Resample(sitk.ReadImage(str(label_file)), grid, sitk.Transform(), sitk.sitkNearestNeighbor)
    return sitk.GetArrayFromImage(label).transpose(2, 1, 0).astype(np.int32)


def ohif_seg(series_files, grid, label, names: dict[int, str]):
    """A SEG as OHIF's viewer saves one: MANUAL segments numbered 1..N, frames only where drawn,
    referencing the series and sharing its Frame of Reference (written with pydicom-seg here).
    ``label``: (X, Y, Z) on ``grid``, the series as a SimpleITK image."""
    import numpy as np
    import pydicom
    import pydicom_seg
    import SimpleITK as sitk

    template = pydicom_seg.template.from_dcmqi_metainfo({
        "ContentCreatorName": "OHIF", "ClinicalTrialSeriesID": "1", "ClinicalTrialTimePointID": "1",
        "SeriesDescription": "Segmentation", "SeriesNumber": "99", "InstanceNumber": "1",
        "ContentLabel": "SEGMENTATION", "ContentDescription": "OHIF segmentation", "BodyPartExamined": "",
        "segmentAttributes": [[{
            "labelID": value, "SegmentLabel": name, "SegmentAlgorithmType": "MANUAL",
            "SegmentedPropertyCategoryCodeSequence": {"CodeValue": "123037004", "CodingSchemeDesignator": "SCT",
                                                      "CodeMeaning": "Anatomical Structure"},
            "SegmentedPropertyTypeCodeSequence": {"CodeValue": "10200004", "CodingSchemeDesignator": "SCT",
                                                  "CodeMeaning": name},
            "recommendedDisplayRGBValue": [200, 50, 50]} for value, name in names.items()]],
    })
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(label).transpose(2, 1, 0)).astype(np.uint16))
    image.CopyInformation(grid)
    sources = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in series_files]
    frame_of_reference = str(sources[0].FrameOfReferenceUID)
    ds = pydicom_seg.MultiClassWriter(template=template, skip_empty_slices=True).write(image, sources)
    ds.FrameOfReferenceUID = frame_of_reference  # as OHIF does (pydicom-seg draws a new one)
    return ds


def draw(gt, organs: dict[int, int], slices_per_organ: int = 2):
    """What a user draws: for each {segment number: ground-truth value}, the organ on
    ``slices_per_organ`` slices spread over its extent. Returns (label (X, Y, Z), {segment: slices})."""
    import numpy as np

    out = np.zeros_like(gt)
    drawn = {}
    for segment, value in organs.items():
        present = [z for z in range(gt.shape[2]) if (gt[:, :, z] == value).any()]
        drawn[segment] = [present[(k + 1) * len(present) // (slices_per_organ + 1)] for k in range(slices_per_organ)]
        for z in drawn[segment]:
            out[:, :, z][gt[:, :, z] == value] = segment
    return out, drawn
