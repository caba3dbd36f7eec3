"""A MONAI Label server with this repository's app, as a process, for tests and bench scripts.

Started with ``python -m monailabel.main start_server`` on a free port of 127.0.0.1 (sessions, the
DICOMweb cache and matplotlib's folder in a throwaway directory), stopped by its PID.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from processes import stop_process

APP = Path(__file__).resolve().parents[1] / "monailabel_app"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MonaiLabelServer:
    def __init__(self, studies: str, work: str | Path, conf: dict[str, str], env: dict[str, str] | None = None,
                 own_group: bool = False):
        self.studies, self.work, self.conf = studies, Path(work), conf
        self.env = env or {}
        self.own_group = own_group  # its own process group, so that kill() also ends the tasks it started
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.work / "server.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120) -> "MonaiLabelServer":
        self.work.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MONAI_LABEL_SESSION_PATH": str(self.work / "sessions"), "PYTHONUNBUFFERED": "1",
               "MPLCONFIGDIR": str(self.work / "mpl"), "MONAI_LABEL_DICOMWEB_CACHE_PATH": str(self.work / "cache"),
               **self.env}
        cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP), "--studies", self.studies,
               "--host", "127.0.0.1", "--port", str(self.port)]
        for key, value in self.conf.items():
            cmd += ["--conf", key, str(value)]
        with open(self.log, "a") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(self.work),
                                            start_new_session=self.own_group)
        deadline = time.time() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.url}/info/", timeout=5).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"server not up after {timeout_s}s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.own_group and self.process is not None and self.process.poll() is None:
            self.kill()
        stop_process(self.process)

    def kill(self) -> None:
        """SIGKILL the server and every process it started (a crash, a power cut): nothing cleans up."""
        import signal

        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)
