"""Self-support (``scripts/engine/self_support.py``): the second pass is the method's own K+1-shot
pass with the query slice and its first answer as the extra shot; slices left empty keep the first."""

from __future__ import annotations

import numpy as np
import torch

from scripts.engine.self_support import SelfSupport
from scripts.network.presets import build_segmenter


def _episode():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, 1, 64, 64)).astype(np.float32)
    masks = np.zeros_like(images)
    masks[:, :, 20:40, 20:40] = 1
    queries = rng.uniform(-1, 1, (4, 64, 64)).astype(np.float32)
    return images, masks, queries, np.array([0, 0, 1, 1])


def test_the_second_pass_adds_the_query_and_its_first_answer_as_a_shot():
    torch.manual_seed(0)
    method = build_segmenter(preset="tiny", channels_last=False).eval()
    method.threshold = -1.0  # every pixel foreground: every slice gets a second pass
    images, masks, queries, episode = _episode()
    scores = SelfSupport(method).predict_scores(images, masks, queries, episode)
    first = method.predict_scores(images, masks, queries, episode)
    own = np.asarray(method.binarize(first, support_masks=masks)).astype(np.float32)
    by_hand = method.predict_scores(np.concatenate([images[episode], queries[:, None]], axis=1),
                                    np.concatenate([masks[episode], own[:, None]], axis=1), queries, np.arange(4))
    np.testing.assert_allclose(scores, by_hand, atol=1e-4)
    assert np.abs(scores - first).max() > 1e-3


def test_slices_the_first_pass_leaves_empty_keep_its_scores():
    torch.manual_seed(0)
    method = build_segmenter(preset="tiny", channels_last=False).eval()
    method.threshold = 10.0  # nothing is foreground
    images, masks, queries, episode = _episode()
    wrapped = SelfSupport(method)
    np.testing.assert_array_equal(wrapped.predict_scores(images, masks, queries, episode),
                                  method.predict_scores(images, masks, queries, episode))
    assert wrapped.name == "sdfsmis+self-support" and wrapped.threshold == 10.0


def test_the_evaluator_reads_twice_on_request(tmp_path):
    import pytest

    from scripts.engine.evaluation import build_method
    from scripts.network.model_file import save_checkpoint_file

    checkpoint = tmp_path / "tiny.pt"
    save_checkpoint_file(build_segmenter(preset="tiny"), checkpoint)
    assert isinstance(build_method("sdfsmis", checkpoint, self_support=True), SelfSupport)
    assert not isinstance(build_method("sdfsmis", checkpoint), SelfSupport)
    assert not isinstance(build_method("sdfsmis", checkpoint, self_support="false"), SelfSupport)  # the CLI's
    assert isinstance(build_method("sdfsmis", checkpoint, self_support="True"), SelfSupport)
    with pytest.raises(ValueError, match="true or false"):
        build_method("sdfsmis", checkpoint, self_support="yes please")
    with pytest.raises(ValueError, match="baseline"):
        build_method("registration", self_support=True)
