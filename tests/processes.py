"""Stopping the servers the tests start (MONAI Label, Orthanc, Chromium), and reading /infer answers."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path


def stop_process(process: subprocess.Popen | None) -> None:
    """Terminate, then kill if it does not exit within 15 s; a no-op for one already gone."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


def infer_parts(response, tmp: Path) -> tuple[dict, Path]:
    """The multipart answer of MONAI Label's /infer: (result JSON, the label file written to ``tmp``)."""
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    assert response.status_code == 200, response.text[:2000]
    params, path = None, None
    for part in MultipartDecoder.from_response(response).parts:
        disposition = part.headers.get(b"Content-Disposition", b"").decode()
        if 'name="params"' in disposition:
            params = json.loads(part.content)
        elif 'name="image"' in disposition:
            path = tmp / f"result_{time.time_ns()}.nii.gz"
            path.write_bytes(part.content)
    assert params is not None and path is not None, "multipart answer without params or image"
    return params, path
