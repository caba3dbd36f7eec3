"""The MONAI Label server as a reading room uses it, before and after the work queue (issue #40).

One run starts the real server three times on 127.0.0.1 with the shipped model
(``bundle/models/model.pt``, TAEF2), each time on a fresh datastore of the two sample patients (``bundle/sample/chaost2``,
stacked to ``--depth`` slices of 256x256 by repeating their end slices):

- ``before``: ``--conf queue_size 0 --conf warm_up false``: MONAI Label's own ``/infer`` endpoint,
  which runs each inference on the server's event loop, and nothing done ahead of a call;
- ``after, warm-up chunk 8``: the queue with the warm-up's former chunk (``--conf warm_up_chunk 8``):
  a call that comes in while an image is being encoded waits for up to 8 slices;
- ``after``: the app's defaults (``lib/work_queue.py``, ``lib/infer_route.py``, ``lib/warmup.py``).

On each, one labeller's flow, then a crowd:

1. open patient A (``GET /datastore/image``, as a viewer does), draw for ``--draw-s`` seconds, save
   the liver on its middle slice as the final label, ``fewshot``: the first call;
2. the same call again (repeated); a correction (the liver on one more slice saved) and the call;
3. the four organs, each on its middle slice, saved and segmented (against one organ's call);
4. patient B from A's slices (cross-patient), B opened first;
5. ``--concurrent`` fewshot calls at once while another client polls ``/info/``, the datastore list
   and saves a label every 0.25 s: their answer times, the calls' statuses and order;
6. the server's resident memory, sampled every 0.1 s throughout (peak, and before/after the crowd).

    .venv/bin/python bench/bench_server.py [--depth 40] [--concurrent 20] [--draw-s 10] \
        [--pause-pid <training pid>] [--out bench/results]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "bench")]

from monailabel_server import MonaiLabelServer  # noqa: E402
from quiet import paused, pids_from  # noqa: E402
from result_file import publish  # noqa: E402  (bench/, the script's own folder)

SAMPLE = REPO / "bundle" / "sample" / "chaost2"
ORGANS = {"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}
# before the queue; the queue with the warm-up's former chunk of 8 slices; the app's defaults
MODES = {"before": {"queue_size": "0", "warm_up": "false"}, "after, warm-up chunk 8": {"warm_up_chunk": "8"},
         "after": {}}


def write_patient(pid: int, depth: int, studies: Path, labels: Path) -> np.ndarray:
    """Sample patient ``pid`` stacked to ``depth`` slices (end slices repeated, no organ there): the
    image into the datastore, the ground truth aside. Returns the ground truth (X, Y, Z)."""
    image, label = (nib.load(SAMPLE / f"{kind}_{pid}.nii.gz") for kind in ("image", "label"))
    extra = max(0, depth - image.shape[2])
    pad = ((0, 0), (0, 0), (extra // 2, extra - extra // 2))
    gt = np.asarray(label.dataobj).astype(np.uint8)
    gt[:, :, [0, -1]] = 0
    gt = np.pad(gt, pad, mode="edge")
    nib.save(nib.Nifti1Image(np.pad(np.asarray(image.dataobj), pad, mode="edge"), image.affine), studies / f"image_{pid}.nii.gz")
    nib.save(nib.Nifti1Image(gt, image.affine), labels / f"label_{pid}.nii.gz")
    return gt


def drawn(gt: np.ndarray, organs: list[int], extra_slice: bool = False, shift: int = 0) -> np.ndarray:
    """Each organ on its middle slice (moved by ``shift``; and on the slice 3 above: a correction)."""
    out = np.zeros_like(gt)
    for value in organs:
        zs = np.flatnonzero((gt == value).any(axis=(0, 1)))
        middle = int(zs[len(zs) // 2]) + shift
        for z in [middle] + ([min(middle + 3, int(zs[-1]))] if extra_slice else []):
            out[:, :, z] = np.where(gt[:, :, z] == value, value, out[:, :, z])
    return out


class Memory:
    """Resident memory of the server and its children, sampled in a thread."""

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now_gib(self) -> float:
        try:
            tree = [self.process] + self.process.children(recursive=True)
            return sum(p.memory_info().rss for p in tree if p.is_running()) / 2**30
        except psutil.Error:
            return 0.0

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(self.now_gib())
            time.sleep(0.1)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.samples, default=0.0)


class Client:
    def __init__(self, url: str, work: Path, studies: Path):
        self.url, self.work, self.studies = url, work, studies

    def save(self, image: str, label: np.ndarray, name: str) -> float:
        path = self.work / name
        nib.save(nib.Nifti1Image(label, nib.load(self.studies / f"{image}.nii.gz").affine), path)
        start = time.perf_counter()
        response = requests.put(f"{self.url}/datastore/label", params={"image": image, "tag": "final"},
                                files={"label": (path.name, path.read_bytes(), "application/octet-stream")}, timeout=600)
        response.raise_for_status()
        return time.perf_counter() - start

    def fewshot(self, image: str, params: dict | None = None) -> tuple[float, requests.Response]:
        start = time.perf_counter()
        response = requests.post(f"{self.url}/infer/fewshot", params={"image": image},
                                 data={"params": json.dumps(params or {})}, timeout=1200)
        return time.perf_counter() - start, response

    def timed_call(self, image: str, params: dict | None = None) -> float:
        seconds, response = self.fewshot(image, params)
        if response.status_code != 200:
            raise RuntimeError(f"fewshot on {image} answered {response.status_code}: {response.text[:300]}")
        return seconds

    def open_image(self, image: str) -> None:
        requests.get(f"{self.url}/datastore/image", params={"image": image}, timeout=600).raise_for_status()


def crowd(client: Client, gt_b: np.ndarray, calls: int) -> dict:
    """``calls`` fewshot calls at once (A in-volume), while another client keeps using the server."""
    answers: dict[str, list[float]] = {"info": [], "datastore": [], "label save": []}
    finished: list[tuple[int, float]] = []
    statuses: list[int] = []

    def call(i: int):
        seconds, response = client.fewshot("image_15", {"threshold": 0.001 * i})  # distinct requests
        statuses.append(response.status_code)
        finished.append((i, time.perf_counter()))
        return seconds

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=calls) as pool:
        futures = []
        for i in range(calls):
            futures.append(pool.submit(call, i))
            time.sleep(0.02)  # a known arrival order
        k = 0
        while not all(f.done() for f in futures):
            what = ("info", "datastore", "label save")[k % 3]
            t = time.perf_counter()
            try:
                if what == "info":
                    requests.get(f"{client.url}/info/", timeout=600).raise_for_status()
                elif what == "datastore":
                    requests.get(f"{client.url}/datastore/", params={"output": "stats"}, timeout=600).raise_for_status()
                else:
                    client.save("image_39", drawn(gt_b, [1]), "b_liver.nii.gz")
            except requests.RequestException as error:
                print(f"  {what} failed during the crowd: {error}")
            if not all(f.done() for f in futures):
                answers[what].append(time.perf_counter() - t)
            k += 1
            time.sleep(0.25)
        seconds = [f.result() for f in futures]
    order = [i for i, _ in sorted(finished, key=lambda item: item[1])]
    return {"wall_s": time.perf_counter() - start, "statuses": statuses, "call_s": seconds,
            "in_order": order == sorted(order), "answers": answers}


def run(mode: str, depth: int, calls: int, draw_s: float, root: Path) -> dict:
    studies, labels, work = root / mode / "studies", root / mode / "gt", root / mode / "client"
    for folder in (studies, labels, work):
        folder.mkdir(parents=True)
    gt_a, gt_b = write_patient(15, depth, studies, labels), write_patient(39, depth, studies, labels)
    server = MonaiLabelServer(str(studies), root / mode / "server", {"labels": "chaost2", **MODES[mode]})
    began = time.perf_counter()
    server.start(timeout_s=600)
    figures = {"ready_s": time.perf_counter() - began}
    memory = Memory(server.process.pid)
    try:
        client = Client(server.url, work, studies)
        client.open_image("image_15")
        time.sleep(draw_s)  # the labeller draws the liver on one slice
        figures["label save (idle)"] = client.save("image_15", drawn(gt_a, [1]), "a_liver.nii.gz")
        figures["first call"] = client.timed_call("image_15")
        figures["repeated call"] = client.timed_call("image_15")
        client.save("image_15", drawn(gt_a, [1], extra_slice=True), "a_liver_corrected.nii.gz")
        figures["call after a correction"] = client.timed_call("image_15")
        client.save("image_15", drawn(gt_a, list(ORGANS.values())), "a_four.nii.gz")
        figures["four organs, one slice each"] = client.timed_call("image_15")
        client.save("image_15", drawn(gt_a, [1], shift=-1), "a_liver_other.nii.gz")  # a new walk, latents ready
        figures["one organ, after the four"] = client.timed_call("image_15")
        client.open_image("image_39")
        time.sleep(draw_s)
        figures["patient B from A's slices"] = client.timed_call("image_39", {"support_image": "image_15"})
        figures["memory before the crowd (GiB)"] = memory.now_gib()
        figures["crowd"] = crowd(client, gt_b, calls)
        figures["memory after the crowd (GiB)"] = memory.now_gib()
    finally:
        figures["peak memory (GiB)"] = memory.stop()
        server.stop()
    return figures


def table(results: dict, calls: int) -> list[str]:
    def cell(mode: str, key: str) -> str:
        value = results[mode].get(key)
        return "-" if value is None else f"{value:.2f}"

    modes = list(results)
    rows = ["| | " + " | ".join(modes) + " |", "|---" * (len(modes) + 1) + "|"]
    for key in ("ready_s", "first call", "repeated call", "call after a correction", "four organs, one slice each",
                "one organ, after the four", "patient B from A's slices"):
        label = "server start to first /info/" if key == "ready_s" else key
        rows.append(f"| {label} (s) | " + " | ".join(cell(mode, key) for mode in modes) + " |")
    for mode in results:
        four, one = results[mode]["four organs, one slice each"], results[mode]["one organ, after the four"]
        results[mode]["four / one"] = four / one
    rows.append("| four organs / one organ | " + " | ".join(cell(mode, "four / one") for mode in modes) + " |")
    for what in ("info", "datastore", "label save"):
        row = []
        for mode in modes:
            seen = results[mode]["crowd"]["answers"][what]
            row.append(f"{max(seen):.2f} max, {statistics.median(seen):.2f} median ({len(seen)} answered)" if seen
                       else "none answered while the calls ran")
        rows.append(f"| `{what}` during {calls} calls (s) | " + " | ".join(row) + " |")
    for mode in results:
        crowd_ = results[mode]["crowd"]
        ok = sum(s == 200 for s in crowd_["statuses"])
        results[mode]["crowd summary"] = (f"{ok}/{len(crowd_['statuses'])} answered 200 in {crowd_['wall_s']:.1f}s, "
                                          f"slowest {max(crowd_['call_s']):.1f}s, "
                                          f"{'in arrival order' if crowd_['in_order'] else 'NOT in arrival order'}")
    rows.append(f"| {calls} concurrent calls | " + " | ".join(results[mode]["crowd summary"] for mode in modes) + " |")
    for key in ("memory before the crowd (GiB)", "memory after the crowd (GiB)", "peak memory (GiB)"):
        rows.append(f"| {key} | " + " | ".join(cell(mode, key) for mode in modes) + " |")
    return rows


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depth", type=int, default=40)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--draw-s", type=float, default=10.0, help="seconds between opening an image and the call")
    parser.add_argument("--pause-pid", default=None, help="pids to pause (SIGSTOP) while measuring, e.g. a training")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_server_") as tmp, paused(pids_from(args.pause_pid)):
        for mode in MODES:
            results[mode] = run(mode, args.depth, args.concurrent, args.draw_s, Path(tmp))
            print(mode, json.dumps({k: v for k, v in results[mode].items() if k != "crowd"}, default=str))
    today = datetime.date.today().isoformat()
    text = "\n".join([
        f"# The MONAI Label server before and after the work queue ({today})",
        "",
        f"`bench/bench_server.py --depth {args.depth} --concurrent {args.concurrent} --draw-s {args.draw_s:g}`; "
        f"the shipped model (bundle/models/model.pt, compact, TAEF2) on the CPU; sample patients A and B "
        f"(CHAOS 15, 39) stacked to {args.depth} slices of 256x256; {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores, load average {load:.1f} at the start"
        f"{', other work paused while measuring' if args.pause_pid else ''}. Before: MONAI Label's own `/infer` "
        "endpoint (`--conf queue_size 0 --conf warm_up false`); after: the app's defaults (a queue of 32 calls, "
        "warm-up encoding its default `warm_up_chunk` of slices between two looks for a call); `after, warm-up chunk "
        "8`: the same with the warm-up's former 8 slices. Each call is timed at the client; a labeller takes "
        f"{args.draw_s:g} s to draw a slice. "
        "Every column encodes only the slices a walk reaches on a cold call (`bench/bench_propagation.py` "
        "measures that lever alone).",
        "",
        *table(results, args.concurrent),
        "",
    ])
    publish(text, args.out, "server")
    return text


if __name__ == "__main__":
    main()
