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


class _Recorder:
    """A latent-reading method whose scores are the first support's mask, recording each call's shots."""

    def __init__(self, self_support: bool):
        from scripts.network.model_config import ModelConfig

        self.config = ModelConfig(preset="tiny", self_support=self_support)
        self.shots: list[int] = []

    def encode_images_cached(self, images):
        return torch.zeros(len(images), 1, 4, 4)

    def predict_scores(self, support_images, support_masks, query_images, query_episode, **_):
        self.shots.append(support_masks.shape[1])
        return np.where(support_masks[np.asarray(query_episode), 0] > 0, 1.0, -1.0).astype(np.float32)

    def binarize(self, scores, support_masks=None, threshold=None, threshold_mode=None):
        return np.asarray(scores) > (0.0 if threshold is None else threshold)


def test_the_seam_reads_another_volumes_support_twice_as_the_model_says_and_in_volume_once():
    from scripts.engine.inferer import segment_volume

    image = np.zeros((6, 32, 32), np.float32)
    label = np.zeros((6, 32, 32), np.int32)
    label[2:4, 8:24, 8:24] = 1
    twice, once = _Recorder(self_support=True), _Recorder(self_support=False)
    across = segment_volume(twice, image, label, image.copy())
    # one pass of the drawn shots, then one with the query slice and its first answer added
    assert twice.shots == [2, 3]
    assert segment_volume(once, image, label, image.copy()).label.tolist() == across.label.tolist()
    assert once.shots == [2]
    # the query's own label, propagated or from the nearest drawn slices: read once, as without the key
    for mode in ("propagate", "nearest"):
        within, plain = _Recorder(self_support=True), _Recorder(self_support=False)
        for method in (within, plain):
            segment_volume(method, image, label, image, same_volume=True, mode=mode)
        assert within.shots and within.shots == plain.shots
