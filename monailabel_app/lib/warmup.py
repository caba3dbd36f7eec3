"""Work done before a client asks: the model (and the result writer) loaded at server start, images
encoded ahead of a call.

Encoding every slice with TAEF2 is most of a first call's time on the CPU (0.15 s a slice). The
segmenter keeps latents in a cache keyed by the slices' content (``slice_latents.py``), so an
image encoded in the background is found there by the call, whatever path names it. Images are
warmed, on the work queue's background priorities (``lib/work_queue.py``), when:

- the server starts: the ``warm_images`` most recently changed images of the datastore;
- an image arrives (``PUT /datastore/image``), a client opens one (``GET /datastore/image``: a
  viewer loads the image before anyone can draw on it) or saves a label on it.

An image a client opens goes before the start-up batch; a client faster than the warm-up waits at
most for the ``chunk`` slices being encoded (a call never waits behind queued warm-ups: calls go
first), and a call on an image not warmed yet encodes only the slices it needs. The cache holds the most
recently used images (the segmenter's ``latent_cache_size``); an image warmed and pushed out is
encoded again by the call. Images of a PACS datastore are not warmed (they open through the PACS).
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict

import numpy as np

from lib.work_queue import WorkQueue

logger = logging.getLogger(__name__)


MODEL, OPENED, AT_START = 1, 2, 3  # background priorities: an image someone opened before the start-up batch
# slices encoded between two looks at the queue (the app's `warm_up_chunk`): a call that comes in waits
# for at most this many, about 0.3 s on 2 cores with TAEF2 (the former 8, about 1.2 s: bench/bench_server.py
# runs both); the encoder gains nothing from larger batches
WARM_UP_CHUNK = 2


class Warmup:
    def __init__(self, work: WorkQueue, model, device: str, slice_axis: int = 2, remember: int = 8,
                 chunk: int = WARM_UP_CHUNK):
        self.work = work
        self.chunk = chunk
        self.model = model  # lib.served_model.FewShotModel
        self.device = device
        self.slice_axis = slice_axis
        self._done: OrderedDict[tuple, None] = OrderedDict()  # image versions already encoded
        self._remember = remember  # as many as the segmenter's latent cache keeps (8 by default)

    def load_model(self):
        return self.work.submit_background("model", self._load, priority=MODEL)

    def image(self, path: str | None, priority: int = OPENED):
        """Encode the image at ``path`` in the background, once per version of the file."""
        try:
            stat = os.stat(path)
        except (OSError, TypeError):
            return None
        version = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
        if version in self._done:
            return None
        return self.work.submit_background(version, self._encode, path, version, priority, priority=priority)

    def images(self, paths: list[str], count: int) -> None:
        """The ``count`` most recently changed of ``paths``."""
        def changed(path: str) -> float:
            try:
                return os.stat(path).st_mtime
            except OSError:
                return 0.0

        for path in sorted(paths, key=changed, reverse=True)[:max(0, count)]:
            self.image(path, AT_START)

    def _load(self):
        start = time.perf_counter()
        try:
            self.model.get(self.device)
        except Exception as error:  # missing weights: every call says so itself (424)
            logger.warning(f"warm-up: the model could not be loaded at start: {getattr(error, 'detail', error)}")
        # MONAI Label writes results with ITK, whose modules load lazily on first use: 2 s of a first call
        import itk

        itk.ImageFileWriter[type(itk.image_from_array(np.zeros((2, 2, 2), np.uint8)))].New()
        itk.NiftiImageIO.New()
        logger.info(f"warm-up: model and result writer ready in {time.perf_counter() - start:.1f}s")

    def _encode(self, path: str, version: tuple, priority: int) -> None:
        """Encode the image a few slices at a time; when a call comes in, leave the rest for later
        (queued again behind the call): the call finds the slices done so far and encodes only
        those it needs of the rest."""
        from scripts.data.volumes import load_volume

        if version in self._done:  # queued twice (opened while waiting among the start-up images)
            return
        start = time.perf_counter()
        segmenter = self.model.get(self.device)
        if not hasattr(segmenter, "latents_of"):
            return
        volume = load_volume(path, slice_axis=self.slice_axis)
        depth = volume.image.shape[0]
        with self.model.lock:
            latents = segmenter.latents_of(volume.image)
        for first in range(0, depth, self.chunk):
            if self.work.calls_waiting():
                self.work.submit_background(("rest of", version), self._encode, path, version, priority,
                                            priority=priority)
                logger.info(f"warm-up: {os.path.basename(path)} paused for a call after {first} slices")
                return
            with self.model.lock:
                latents[np.arange(first, min(first + self.chunk, depth))]
        self._done[version] = None
        while len(self._done) > self._remember:
            self._done.popitem(last=False)
        logger.info(f"warm-up: {os.path.basename(path)} encoded ({depth} slices) in {time.perf_counter() - start:.1f}s")
