"""``POST /infer/{model}`` served through the app's work queue, so the server keeps answering.

MONAI Label 0.8's endpoint is ``async def`` and calls its synchronous ``run_inference`` directly:
the event loop is blocked for the whole inference (``/info/`` took minutes under 20 concurrent
calls). MONAI Label has no hook for this, so the app swaps that one route, at server start, for one
with the same path, parameters, permissions and ``run_inference`` (MONAI Label's own function, so
uploads, sessions and responses stay exactly as they are), awaited on ``lib/work_queue.py``'s worker.
A full queue answers 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Optional

from fastapi import BackgroundTasks, Depends, File, Form, HTTPException, UploadFile
from fastapi.routing import APIRoute

from monailabel.config import settings
from monailabel.endpoints import infer as stock
from monailabel.endpoints.user.auth import RBAC, User

from lib.work_queue import QueueFull, WorkQueue

logger = logging.getLogger(__name__)

PATH = "/infer/{model}"  # in MONAI Label's infer router (its prefix included)


def queued_inference(work: WorkQueue):
    async def api_run_inference(
        background_tasks: BackgroundTasks,
        model: str,
        image: str = "",
        session_id: str = "",
        params: str = Form("{}"),
        file: UploadFile = File(None),
        label: UploadFile = File(None),
        output: Optional[stock.ResultType] = None,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
    ):
        try:
            future = work.submit(stock.run_inference, background_tasks, model, image, session_id, params, file,
                                 label, output)
        except QueueFull as full:
            raise HTTPException(status_code=503, detail=f"the few-shot server is busy: {full}",
                                headers={"Retry-After": str(full.retry_after_s)}) from None
        return await asyncio.wrap_future(future)

    return api_run_inference


def serve_inference_through(work: WorkQueue, server=None) -> None:
    """Replace MONAI Label's ``POST /infer/{model}`` by the queued one, in the same place of the route
    list: in MONAI Label's infer router, which FastAPI (0.165, requirements.txt) reads from at each
    request, and in ``server``'s own routes (default: MONAI Label's app), where older FastAPI copied it."""
    if server is None:
        from monailabel.app import app as server
    replaced = 0
    for router, prefix in ((stock.router, ""), (server.router, settings.MONAI_LABEL_API_STR)):
        routes = router.routes
        found = [i for i, r in enumerate(routes)
                 if isinstance(r, APIRoute) and r.path == prefix + PATH and "POST" in r.methods]
        if not found:
            continue
        old = routes.pop(found[0])
        router.add_api_route(prefix + PATH[len(router.prefix):], queued_inference(work), methods=["POST"],
                             summary=old.summary, tags=old.tags, responses=old.responses, description=old.description)
        routes.insert(found[0], routes.pop())
        replaced += 1
    if not replaced:
        raise RuntimeError(f"MONAI Label's route POST {PATH} was not found: this version of monailabel or fastapi "
                           "is not the one the app was written for (requirements.txt)")
    logger.info(f"inference calls are queued ({work.capacity} at most; 503 beyond): the server answers while one runs")
