"""A few-shot result kept in the PACS as well as sent to the client.

On a PACS datastore (``lib/datastores/pacs.py``) every result is stored there as a DICOM SEG of the
query series, marked as this app's (so it is never taken for a user's label), unless the request or
``--conf store_result`` says false. The infer task stores it last, after the result file is
written, so a call that fails stores nothing. A folder datastore keeps no result: a client saves
the label it accepts.
"""

from __future__ import annotations

import os

from fastapi import HTTPException

from lib.datastores.pacs import PacsDatastore
from lib.request_params import parse_switch


def keeps_results(datastore) -> bool:
    return isinstance(datastore, PacsDatastore)


def store_in_pacs(pacs: PacsDatastore, request: dict, label_file: str, labels: dict[str, int],
                  default: bool = True) -> dict | None:
    """The result file as a SEG of the request's series; None when the request says not to
    (``store_result``), or its image is an upload, not a series of the PACS."""
    if not parse_switch(request.get("store_result"), default):
        return None
    series = pacs.image_id_of(request["image"])
    if series is None:
        return None
    try:
        return pacs.store_result(series, label_file, {value: name for name, value in labels.items()})
    except HTTPException:
        os.unlink(label_file)  # MONAI Label's endpoint removes the result file only when the call succeeds
        raise
