"""The evaluator of training runs: protocol cases through a stock MONAI ``Evaluator``.

Each iteration is one (support volume, query volume, organ) case of the protocol (EP1 by default),
predicted by the EMA weights; ``pred`` and ``label`` are the scored 3D masks, so MONAI's
``MeanDice`` handler computes the per-volume 3D Dice the field reports. Validation cases use
training classes of training patients only: a "best" checkpoint is never chosen on a test fold.
"""

from __future__ import annotations

import numpy as np
import torch

from scripts.protocol.evaluate import episodes_for, predict_case
from scripts.protocol.folds import sort_pids


def validation_cases(volumes, values: dict[str, int], max_queries: int = 3, mode: str = "ep1",
                     extras=()) -> list[dict]:
    """Support = the first training patient, queries = the next ``max_queries``, every class; the
    same within each extra dataset (``experiment.ExtraDataset``: its own patients and label values,
    organs named ``<dataset>:<organ>``)."""
    pids = sort_pids([v.pid for v in volumes])
    if len(pids) < 2:
        raise ValueError("validation needs at least two training volumes")
    support, queries = pids[0], pids[1: 1 + max_queries]
    cases = [{"support_pid": support, "query_pid": q, "organ": n, "value": v, "mode": mode}
             for n, v in values.items() for q in queries]
    for extra in extras:
        try:
            more = validation_cases(extra.train_volumes, extra.train_values, max_queries, mode)
        except ValueError as error:
            raise ValueError(f"extra dataset {extra.name}: {error}") from error
        cases += [{**case, "organ": f"{extra.name}:{case['organ']}"} for case in more]
    return cases


class CaseIteration:
    """``iteration_update`` of MONAI's Evaluator: one protocol case -> scored pred/label masks."""

    def __init__(self, method, volumes, shots: int = 1):
        self.method = method
        self.volumes = {v.pid: v for v in volumes}
        self.shots = shots

    def __call__(self, engine, case: dict) -> dict:
        support, query = self.volumes[case["support_pid"]], self.volumes[case["query_pid"]]
        episodes = episodes_for(case["mode"], support, query, case["value"], self.shots)
        keep = np.zeros(query.label.shape[0], dtype=bool)
        keep[episodes.scored_z] = True
        pred = predict_case(self.method, support, query, case["value"], episodes) & keep[:, None, None]
        label = (query.label == case["value"]) & keep[:, None, None]
        as_batch = lambda mask: torch.as_tensor(mask[None, None].astype(np.float32))  # noqa: E731
        return {"pred": as_batch(pred), "label": as_batch(label), "case": case}


def first_item(items: list):
    """Collate of batch size 1 for cases (dicts of plain values)."""
    return items[0]
