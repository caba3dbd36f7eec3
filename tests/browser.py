"""A headless Chromium driven over the DevTools protocol, for the viewer test (no Selenium needed).

Debian's ``chromium`` is started with ``--remote-debugging-port`` on a throwaway profile and stopped
by its PID; one page is driven through its DevTools websocket (aiohttp, already installed): open a
URL, wait for a JavaScript condition, click on an element found by its text (real mouse events, as a
user's), take screenshots. ``missing()`` says when no Chromium is installed.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import requests

from processes import stop_process


def binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def missing() -> str | None:
    if binary() is None:
        return "Chromium is not installed (Debian package 'chromium'; `make setup-pacs` installs it)"
    return None


class Chromium:
    def __init__(self, profile: str | Path, port: int, size=(1400, 900)):
        self.profile, self.port, self.size = Path(profile), port, size
        self.process: subprocess.Popen | None = None
        self.loop = asyncio.new_event_loop()
        self._ids = itertools.count(1)
        self._session = self._ws = None

    def start(self, timeout_s: float = 30) -> "Chromium":
        self.profile.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [binary(), "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
             "--hide-scrollbars", "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={self.profile}",
             f"--window-size={self.size[0]},{self.size[1]}", f"--remote-debugging-port={self.port}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=open(self.profile / "chromium.log", "w"))
        deadline = time.time() + timeout_s
        while True:
            try:
                pages = requests.get(f"http://127.0.0.1:{self.port}/json/list", timeout=2).json()
                page = next(p for p in pages if p.get("type") == "page")
                break
            except (requests.RequestException, StopIteration, ValueError):
                if self.process.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"Chromium did not start: {(self.profile / 'chromium.log').read_text()[-1500:]}")
                time.sleep(0.3)
        self.loop.run_until_complete(self._connect(page["webSocketDebuggerUrl"]))
        return self

    async def _connect(self, url: str):
        import aiohttp

        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(url, max_msg_size=0)

    async def _call(self, method: str, params: dict | None = None, timeout_s: float = 60):
        call_id = next(self._ids)
        await self._ws.send_str(json.dumps({"id": call_id, "method": method, "params": params or {}}))
        deadline = time.time() + timeout_s
        while True:
            message = await self._ws.receive(timeout=max(deadline - time.time(), 0.1))
            data = json.loads(message.data)
            if data.get("id") == call_id:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data.get("result", {})

    def call(self, method: str, params: dict | None = None, timeout_s: float = 60):
        return self.loop.run_until_complete(self._call(method, params, timeout_s))

    # ---- what a test does ------------------------------------------------------------------------
    def open(self, url: str) -> None:
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", {"width": self.size[0], "height": self.size[1],
                                                          "deviceScaleFactor": 1, "mobile": False})
        self.call("Page.navigate", {"url": url})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout_s: float = 60, every_s: float = 0.5) -> bool:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.evaluate(expression):
                return True
            time.sleep(every_s)
        return False

    def find_text(self, text: str, exact: bool = True):
        """Centre (x, y) of the smallest visible element whose text is (or contains) ``text``."""
        return self.evaluate(f"""(() => {{
            const want = {json.dumps(text)}, exact = {json.dumps(exact)};
            let best = null;
            for (const el of document.querySelectorAll('body *')) {{
                const t = (el.innerText || '').trim();
                if (!(exact ? t === want : t.includes(want))) continue;
                const r = el.getBoundingClientRect();
                if (r.width === 0 || r.height === 0) continue;
                if (!best || r.width * r.height < best.a) best = {{x: r.x + r.width / 2, y: r.y + r.height / 2, a: r.width * r.height}};
            }}
            return best && [best.x, best.y];
        }})()""")

    def click(self, x: float, y: float, count: int = 1) -> None:
        self.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        for n in range(1, count + 1):
            for kind in ("mousePressed", "mouseReleased"):
                self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": n})

    def click_text(self, text: str, count: int = 1, exact: bool = True) -> bool:
        where = self.find_text(text, exact)
        if not where:
            return False
        self.click(*where, count=count)
        return True

    def screenshot(self, path: str | Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def stop(self) -> None:
        if self._ws is not None:
            self.loop.run_until_complete(self._ws.close())
            self.loop.run_until_complete(self._session.close())
            self._ws = None
        stop_process(self.process)
        self.loop.close()


# ---- OHIF (the viewer MONAI Label serves at /ohif/) ---------------------------------------------------
def _pixels(path: Path, box) -> np.ndarray:
    from PIL import Image

    x, y, w, h = (int(round(v)) for v in box)
    return np.asarray(Image.open(path).convert("RGB"))[y:y + h, x:x + w].astype(int)


def image_fraction(path: Path, box) -> float:
    """Share of the viewport's pixels that show image (not black)."""
    rgb = _pixels(path, box)
    return float((rgb.max(axis=2) > 40).mean())


def overlay_pixels(path: Path, box) -> int:
    """Pixels of the viewport tinted red-orange (a segment's colour over a grey image)."""
    rgb = _pixels(path, box)
    return int(((rgb[..., 0] - np.maximum(rgb[..., 1], rgb[..., 2])) > 40).sum())


def ohif_show_seg(b: Chromium, server: str, study_uid: str, slices: int, seg_description: str, slice_index: int,
                  out_dir: Path, timeout_s: float = 120) -> dict:
    """Open the study in OHIF, show slice ``slice_index`` of its series, load the SEG listed as
    ``seg_description`` over it; screenshots at each stage. Returns how far it got."""
    import re

    got: dict = {"study_opened": False, "image_rendered": False, "overlay_pixels_before": None, "seg_opened": False,
                 "overlay_pixels": 0, "panel_text": "", "screenshots": []}

    def shot(name):
        path = b.screenshot(out_dir / name)
        got["screenshots"].append(str(path))
        return path

    def viewport():
        return b.evaluate("(() => { let best = null; for (const c of document.querySelectorAll('canvas')) {"
                          " const r = c.getBoundingClientRect(); if (!best || r.width * r.height > best[2] * best[3])"
                          " best = [r.x, r.y, r.width, r.height]; } return best; })()")

    def scroll_to(index):
        for _ in range(2 * slices):
            text = b.evaluate("document.body.innerText") or ""
            found = re.search(r"I:\s*(\d+) \((\d+)/" + str(slices) + r"\)", text)
            if found is None:
                return False
            current = int(found.group(2)) - 1
            if current == index:
                return True
            box = viewport()
            b.call("Input.dispatchMouseEvent", {"type": "mouseWheel", "x": box[0] + box[2] / 2, "y": box[1] + box[3] / 2,
                                                "deltaX": 0, "deltaY": 100 if index > current else -100})
            time.sleep(0.15)
        return False

    b.open(f"{server}/ohif/viewer?StudyInstanceUIDs={study_uid}")
    got["study_opened"] = b.wait_for(f"document.body.innerText.includes('(1/{slices})')", timeout_s)
    if not got["study_opened"]:
        shot("ohif_0_not_opened.png")
        return got
    b.click_text("Confirm and Hide")  # the investigational-use banner
    if scroll_to(slice_index):
        time.sleep(2)
        path, box = shot("ohif_1_series.png"), viewport()
        got["image_rendered"] = image_fraction(path, box) > 0.02
        got["overlay_pixels_before"] = overlay_pixels(path, box)
    if not b.click_text(seg_description, count=2):
        return got
    if b.wait_for("document.body.innerText.includes('Do you want to open this Segmentation?')", 30):
        b.click_text("Yes")
    got["seg_opened"] = b.wait_for("!!document.querySelector('#panelSegmentation-btn') && "
                                   f"!document.body.innerText.includes('Do you want to open') && "
                                   f"document.body.innerText.includes('(1/{slices})')", 60)
    time.sleep(2)
    if got["seg_opened"] and scroll_to(slice_index):
        b.evaluate("document.querySelector('#panelSegmentation-btn').click()")
        time.sleep(3)
        path = shot("ohif_2_seg.png")
        got["overlay_pixels"] = overlay_pixels(path, viewport())
        text = b.evaluate("document.body.innerText") or ""
        got["panel_text"] = text[text.rfind("Segmentations"):][:300] if "Segmentations" in text else ""
    return got
