"""What a request may read, and where its uploads live until it ends.

MONAI Label's ``/infer`` endpoint passes ``image`` (the query string) and every key of ``params`` on
to the app unchecked, and MONAI Label's own ``infer`` reads any existing path it is given; a client
could name any file on the server as image (``image=/some/file``) or support label
(``params={"label": "/some/file"}``). ``RequestFiles.check`` lets a request read only

- an image of the datastore, named by its id; an image the request uploaded (``file``); or the
  image of a session the client created (``session_id``);
- as label, only the file the request uploaded (``label``).

Anything else is refused with one answer whether or not such a file exists, so the answers tell
nothing about the server's files.

Uploads: MONAI Label writes each uploaded part to a temporary file before the app sees the request
and removes it only when the call succeeds. ``Scratch`` gives the server a private temporary folder
(mode 0700, Python's ``tempfile`` default for the server process) and, at the end of every call that
went through the app (inference, saving a label), success or error, removes whatever arrived there
before that call began: the call's own uploads, and those of requests that failed before they
reached the app. Result files, which MONAI Label sends after the call, are left to it (and removed
by the next calls if it did not). The folders of servers that were killed are removed when the next
server starts.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from lib.responses import refusal

logger = logging.getLogger(__name__)

PREFIX = "monailabel_fewshot_"
RESULT_GRACE_S = 600  # a result file is left this long for MONAI Label to send and remove


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) == os.path.realpath(folder)
    except ValueError:
        return False


class Scratch:
    """The server's private temporary folder (see the module docstring)."""

    def __init__(self, parent: str | None = None):
        parent = parent or tempfile.gettempdir()
        self.remove_stale(parent)
        self.folder = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}_", dir=parent)  # mode 0700
        tempfile.tempdir = self.folder  # MONAI Label's uploads and results, and the tasks' work files
        atexit.register(shutil.rmtree, self.folder, True)
        self._results: dict[str, float] = {}
        logger.info(f"uploads and temporary files of this server: {self.folder}")

    @staticmethod
    def remove_stale(parent: str) -> None:
        """Remove the folders of servers that no longer run (killed before they could clean up)."""
        for folder in Path(parent).glob(f"{PREFIX}*_*"):
            try:
                pid = int(folder.name[len(PREFIX):].split("_")[0])
                os.kill(pid, 0)
            except ProcessLookupError:
                shutil.rmtree(folder, ignore_errors=True)
                logger.info(f"removed {folder}, left by a server that no longer runs")
            except (ValueError, PermissionError, OSError):
                continue  # not ours, or another user's running server

    def holds(self, path) -> bool:
        return isinstance(path, str) and os.path.isfile(path) and _inside(path, self.folder)

    def result(self, path) -> None:
        """A result file MONAI Label will send after the call: not removed before ``RESULT_GRACE_S``."""
        if isinstance(path, str):
            self._results[os.path.realpath(path)] = time.time()

    def end_of_call(self, began: float) -> None:
        """Remove what arrived before the call began at ``began`` (``time.time()``)."""
        now = time.time()
        self._results = {p: t for p, t in self._results.items() if now - t < RESULT_GRACE_S and os.path.exists(p)}
        for entry in os.scandir(self.folder):
            try:
                if entry.path in self._results or entry.stat(follow_symlinks=False).st_mtime >= began:
                    continue
                shutil.rmtree(entry.path) if entry.is_dir(follow_symlinks=False) else os.unlink(entry.path)
            except FileNotFoundError:
                continue  # MONAI Label removed it meanwhile


class RequestFiles:
    """Checks that an infer request reads only what it may (see the module docstring)."""

    def __init__(self, scratch: Scratch | None, datastore, sessions=None):
        self.scratch = scratch
        self.datastore = datastore  # a callable giving the app's datastore
        self.sessions = sessions  # a callable giving MONAI Label's sessions (or None)

    def known_image(self, image_id: str) -> bool:
        datastore = self.datastore()
        if hasattr(datastore, "require_series"):  # a PACS: listing its images would download them all
            return datastore.require_series(image_id)  # its own 404 says why
        return image_id in datastore.list_images()

    def session_image(self, request: dict) -> bool:
        session = request.get("session")
        sessions = self.sessions() if self.sessions else None
        if not isinstance(session, dict) or sessions is None or not isinstance(request.get("image"), str):
            return False
        found = sessions.get_session(str(session.get("session_id", "")), update_ts=False)
        return found is not None and os.path.realpath(found.image) == os.path.realpath(request["image"])

    def check(self, request: dict) -> None:
        image, label = request.get("image"), request.get("label")
        uploaded = self.scratch is not None and self.scratch.holds(image)
        if not isinstance(image, str) or not image.strip():
            raise refusal(400, "parameter 'image' must name an image of the datastore (or upload one as 'file')",
                          "few-shot")
        if not (uploaded or self.session_image(request) or self.known_image(image)):
            raise refusal(404, "image not found: the request names no image of the datastore; name an image by its "
                               "id, or upload it as the request's 'file'", "few-shot")
        if label is not None and not (self.scratch is not None and self.scratch.holds(label)):
            raise refusal(400, "parameter 'label' cannot name a file: upload the label as the request's 'label' part",
                          "few-shot")
