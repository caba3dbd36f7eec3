"""Test-time ensembles (``scripts/engine/ensembles.py``): a mirrored reading is the method on
mirrored slices mirrored back; an ensemble is the mean of its readings, post-processed as the first."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scripts.engine.ensembles import Ensemble, Flipped
from scripts.network.presets import build_segmenter


@pytest.fixture(scope="module")
def episode():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, 1, 64, 64)).astype(np.float32)
    masks = np.zeros_like(images)
    masks[:, :, 20:40, 10:30] = 1  # off-centre: a mirrored reading sees it on the other side
    return images, masks, rng.uniform(-1, 1, (3, 64, 64)).astype(np.float32), np.array([0, 1, 1])


@pytest.fixture(scope="module")
def method():
    torch.manual_seed(0)
    return build_segmenter(preset="tiny", channels_last=False).eval()


def test_a_mirrored_reading_is_the_method_on_mirrored_slices(method, episode):
    images, masks, queries, which = episode
    mirrored = Flipped(method).predict_scores(images, masks, queries, which)
    by_hand = method.predict_scores(images[..., ::-1].copy(), masks[..., ::-1].copy(), queries[..., ::-1].copy(),
                                    which)[..., ::-1]
    np.testing.assert_allclose(mirrored, by_hand, atol=1e-6)
    assert np.abs(mirrored - method.predict_scores(images, masks, queries, which)).max() > 1e-3


def test_an_ensemble_averages_its_readings_and_keeps_the_first_rules(method, episode):
    images, masks, queries, which = episode
    plain = method.predict_scores(images, masks, queries, which)
    mirrored = Flipped(method).predict_scores(images, masks, queries, which)
    both = Ensemble([method, Flipped(method)])
    np.testing.assert_allclose(both.predict_scores(images, masks, queries, which), (plain + mirrored) / 2, atol=1e-5)
    np.testing.assert_allclose(Ensemble([method]).predict_scores(images, masks, queries, which), plain, atol=1e-6)
    assert both.threshold == method.threshold and both.name == "sdfsmis+sdfsmis+flip"
    np.testing.assert_array_equal(both.binarize(plain, support_masks=masks), method.binarize(plain, support_masks=masks))
    with pytest.raises(ValueError):
        Ensemble([])
