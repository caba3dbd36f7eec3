"""In-volume propagation (issue #38): walk out from the drawn slices, each slice served by the one
segmented beside it, stopping where the organ ends; the "label k slices" protocol and its
contour-interpolation baseline."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from scripts.baselines.contour_interpolation import ContourInterpolation
from scripts.engine.inferer import SupportError, segment_volume
from scripts.engine.propagation import (StopRule, _supports, clear_memo, propagate_organ, propagate_organs,
                                        smooth_along_z)
from scripts.network.presets import build_segmenter
from scripts.protocol.matching import DRAW_MODES, drawn_slices

DEPTH, SIZE = 24, 64
FIRST, LAST = 5, 18      # the organ's slices
DRIFT = 2                # pixels it moves per slice: far slices do not overlap the middle one


def drifting_organ():
    """A bright disc that moves DRIFT pixels right per slice over FIRST..LAST (radius 8), and a
    second bright disc in the corner of every slice that is not the organ (a neighbour organ)."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    image = np.full((DEPTH, SIZE, SIZE), -0.5, np.float32)
    label = np.zeros((DEPTH, SIZE, SIZE), np.int32)
    for z in range(DEPTH):
        image[z][(yy - 55) ** 2 + (xx - 55) ** 2 < 16] = 0.9
    for z in range(FIRST, LAST + 1):
        disc = (yy - 24) ** 2 + (xx - (10 + DRIFT * (z - FIRST))) ** 2 < 64
        image[z][disc] = 0.9
        label[z][disc] = 1
    return image, label


class LocalTracker:
    """A stand-in for a segmenter that only looks near its support: bright pixels within a few
    pixels of the (union of the) support masks. From a far support it misses a drifted organ; from
    the neighbouring slice it follows it; where the organ ends it finds nothing."""

    def __init__(self, reach: int = 4):
        self.reach = reach
        self.calls = 0

    def predict_scores(self, support_images, support_masks, query_images, query_episode, **_):
        self.calls += 1
        near = ndimage.binary_dilation(np.asarray(support_masks).max(axis=1) > 0,
                                       iterations=self.reach, axes=(1, 2))[np.asarray(query_episode)]
        return np.where(near & (np.asarray(query_images) > 0.5), 1.0, -1.0).astype(np.float32)

    def binarize(self, scores, support_masks=None):
        return (np.asarray(scores) > 0).astype(np.uint8)


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def draw(label, zs):
    return np.where(np.isin(np.arange(DEPTH), zs)[:, None, None], label, 0)


def test_propagation_follows_a_drifting_organ_that_nearest_support_loses():
    image, label = drifting_organ()
    drawn = draw(label, [12])
    # it reaches as far as the organ moves in one slice
    propagated = segment_volume(LocalTracker(DRIFT), image, drawn, image, same_volume=True, mode="propagate").label
    nearest = segment_volume(LocalTracker(DRIFT), image, drawn, image, same_volume=True, mode="nearest").label
    assert dice(propagated == 1, label == 1) == pytest.approx(1.0)
    assert dice(nearest == 1, label == 1) < 0.85  # slices 2+ away: the disc has left the drawn one's reach


def test_walks_stop_where_the_organ_ends_and_never_jump_to_a_neighbour():
    image, label = drifting_organ()
    method = LocalTracker(reach=60)  # reaches the corner disc from anywhere: only the stop rule keeps it out
    scores, masks = propagate_organ(method, image, {12: label[12] == 1})
    on = np.flatnonzero(masks.any(axis=(1, 2)))
    assert on.min() == FIRST and on.max() == LAST  # nothing past either end
    # on the organ's slices the corner disc, not connected to the previous mask, is refused
    assert not masks[:, 50:, 50:].any()
    np.testing.assert_array_equal(masks[12], label[12] == 1)


def test_the_jump_test_refuses_a_mask_off_the_previous_one():
    image, label = drifting_organ()
    rule = StopRule(margin=0)
    # with no margin, a disc that moves 2 px still touches itself; one moved by 20 px does not
    shifted = np.roll(image, 20, axis=2)
    shifted[12] = image[12]
    _, masks = propagate_organ(LocalTracker(reach=20), shifted, {12: label[12] == 1}, rule=rule)
    assert np.flatnonzero(masks.any(axis=(1, 2))).tolist() == [12]


def test_slices_between_two_drawn_ones_are_served_from_both_sides():
    drawn_z = np.array([6, 16])
    assert _supports(11, [10], drawn_z, max_shots=3) == (10, 6, 16)
    assert _supports(11, [10, 12], drawn_z, max_shots=3) == (10, 12, 6)  # two walks meet
    assert _supports(3, [4], drawn_z, max_shots=3) == (4, 6, 16)          # outside: nearest first
    assert _supports(3, [4], drawn_z, max_shots=1) == (4,)


def test_two_drawn_slices_give_the_organ_between_and_beyond():
    image, label = drifting_organ()
    method = LocalTracker()
    result = segment_volume(method, image, draw(label, [8, 15]), image, same_volume=True)
    assert dice(result.label == 1, label == 1) == pytest.approx(1.0)
    # one call per step (both walks batched), not one per slice: the organ spans 14 slices
    assert method.calls <= 2 * (LAST - FIRST + 1) - 4


def test_a_repeated_walk_is_remembered_and_a_changed_one_is_not():
    image, label = drifting_organ()
    method = LocalTracker()
    drawn = {12: label[12] == 1}
    scores, masks = propagate_organ(method, image, drawn)
    calls = method.calls
    again_scores, again_masks = propagate_organ(method, image, drawn)
    assert method.calls == calls  # remembered: nothing predicted again
    np.testing.assert_array_equal(again_masks, masks)
    again_masks[:] = False  # the caller's copy: the memo is not touched
    assert propagate_organ(method, image, drawn)[1].any()
    edited = {12: np.roll(label[12] == 1, 1, axis=1)}
    propagate_organ(method, image, edited)
    assert method.calls > calls  # another drawing walks again
    calls = method.calls
    method.threshold = 0.5  # a setting that shapes the walk is part of the key
    propagate_organ(method, image, drawn)
    assert method.calls > calls


class ThresholdedTracker(LocalTracker):
    """A ``LocalTracker`` whose ``binarize`` takes a call's own threshold, as the network's does."""

    threshold, threshold_mode = 0.0, "absolute"

    def binarize(self, scores, support_masks=None, threshold=None, threshold_mode=None):
        return (np.asarray(scores) > (self.threshold if threshold is None else threshold)).astype(np.uint8)


@pytest.mark.parametrize("mode", ["propagate", "nearest"])
def test_a_calls_own_threshold_reaches_binarize_and_leaves_the_method_as_it_was(mode):
    image, label = drifting_organ()
    drawn = draw(label, [12])
    method = ThresholdedTracker()
    default = segment_volume(method, image, drawn, image, same_volume=True, mode=mode).label
    assert np.delete(default, 12, axis=0).any()
    calls = method.calls
    strict = segment_volume(method, image, drawn, image, same_volume=True, mode=mode, threshold=2.0).label
    assert method.calls > calls  # not the walk remembered at the method's own threshold
    assert (method.threshold, method.threshold_mode) == (0.0, "absolute")  # the shared method is untouched
    np.testing.assert_array_equal(strict[12], drawn[12])
    assert not np.delete(strict, 12, axis=0).any()  # every score is at most 1: nothing passes 2
    again = segment_volume(method, image, drawn, image, same_volume=True, mode=mode).label
    np.testing.assert_array_equal(again, default)


class SmoothedTracker(ThresholdedTracker):
    """A method with graded scores that asks for smoothing along z, as the network's config does."""

    z_sigma = 1.0


def test_smoothing_along_z_mends_a_one_slice_error_and_adds_nothing_outside_the_walk():
    image, label = drifting_organ()
    organ = np.zeros_like(label, dtype=bool)
    organ[FIRST:LAST + 1] = label[12] == 1                      # an organ that stays put
    scores = np.where(organ, 0.8, -1.0).astype(np.float32)
    scores[11][organ[11] & (np.arange(SIZE) > 18)[None, :]] = -0.3  # one slice read half wrong
    scores[:, 50:, 50:] = 0.8                                   # a neighbour the walk refused (not in masks)
    scores[LAST + 1][organ[LAST]] = 0.9                         # past the end: no walk kept it
    masks = organ & (scores > 0)
    smoothed_scores, smoothed = smooth_along_z(SmoothedTracker(), scores, masks, np.array([12]), sigma=1.0)
    assert dice(masks[11], organ[11]) < 0.9 and dice(smoothed[11], organ[11]) == pytest.approx(1.0)
    np.testing.assert_array_equal(smoothed[12], masks[12])      # drawn: as drawn
    assert not smoothed[LAST + 1].any() and not smoothed[:FIRST].any() and not smoothed[:, 50:, 50:].any()
    assert dice(smoothed, organ) > dice(masks, organ)
    wrong = organ[11] & (scores[11] < 0)
    assert (smoothed_scores[11][wrong] > 0).all()                 # the scores returned are the smoothed ones
    assert smooth_along_z(SmoothedTracker(), scores, masks, np.array([12]), sigma=0.0)[1] is masks


def test_a_method_asking_for_smoothing_gets_it_through_the_walk_and_the_memo_knows():
    image, label = drifting_organ()
    plain, smoothed = ThresholdedTracker(), SmoothedTracker()
    unsmoothed_walk = propagate_organ(plain, image, {12: label[12] == 1})[1]
    smoothed_walk = propagate_organ(smoothed, image, {12: label[12] == 1})[1]
    # a 0/1 reading voted over neighbouring slices: the moving disc's thin rims go, nothing else
    assert not np.array_equal(smoothed_walk, unsmoothed_walk) and not (smoothed_walk & ~unsmoothed_walk).any()
    calls = smoothed.calls
    smoothed.z_sigma = 0.0
    np.testing.assert_array_equal(propagate_organ(smoothed, image, {12: label[12] == 1})[1], unsmoothed_walk)
    assert smoothed.calls > calls  # another sigma is another walk, not the remembered one


def test_drawn_slices_stay_as_drawn_and_bad_drawings_are_refused():
    image, label = drifting_organ()
    drawn = draw(label, [12])
    drawn[12, 0, 0] = 1  # a stray pixel the user drew: kept, it is theirs
    result = segment_volume(LocalTracker(), image, drawn, image, same_volume=True)
    np.testing.assert_array_equal(result.label[12], drawn[12])
    with pytest.raises(ValueError, match="drawn slice 3 is empty"):
        propagate_organ(LocalTracker(), image, {3: np.zeros((SIZE, SIZE), bool)})
    with pytest.raises(ValueError, match="at least one drawn slice"):
        propagate_organ(LocalTracker(), image, {})
    with pytest.raises(SupportError, match="mode must be one of"):
        segment_volume(LocalTracker(), image, drawn, image, same_volume=True, mode="sideways")


def test_the_network_propagates_through_the_seam():
    """The real (tiny, untrained) network on the propagation path: it runs batched with its
    latent cache, every slice gets a score, the drawn slice is kept."""
    torch.manual_seed(0)
    method = build_segmenter(preset="tiny", channels_last=False).eval()
    image, label = drifting_organ()
    drawn = draw(label, [10, 14])
    result = segment_volume(method, image, drawn, image, same_volume=True, mode="propagate")
    assert result.label.shape == image.shape
    for z in (10, 14):
        np.testing.assert_array_equal(result.label[z], drawn[z])
    assert result.support_slices["1"] == [10, 14]


def test_drawn_slices_are_evenly_spaced_within_the_organ():
    _, label = drifting_organ()
    assert drawn_slices(label, 1, 1).tolist() == [12]  # the middle of 5..18 (14 slices)
    three = drawn_slices(label, 1, 3)
    assert len(three) == 3 and FIRST < three[0] < three[1] < three[2] < LAST
    assert set(DRAW_MODES.values()) == {1, 2, 3, 5}
    with pytest.raises(ValueError, match="fewer than"):
        drawn_slices(label[:7], 1, 3)  # two organ slices only


def test_contour_interpolation_fills_between_drawn_slices_only():
    yy, xx = np.mgrid[:SIZE, :SIZE]
    drawn = np.zeros((12, SIZE, SIZE), np.int32)
    drawn[2][(yy - 32) ** 2 + (xx - 32) ** 2 < 6 ** 2] = 3
    drawn[9][(yy - 32) ** 2 + (xx - 32) ** 2 < 14 ** 2] = 3
    out = ContourInterpolation().segment_drawn(np.zeros(drawn.shape, np.float32), drawn, 3)
    areas = out.sum(axis=(1, 2))
    assert areas[:2].sum() == 0 and areas[10:].sum() == 0  # nothing outside the drawn range
    assert np.all(np.diff(areas[2:10]) >= 0) and areas[2] < areas[5] < areas[9]  # grows from one to the other
    np.testing.assert_array_equal(out[2], drawn[2] == 3)
    single = np.where(np.arange(12)[:, None, None] == 9, drawn, 0)
    assert ContourInterpolation().segment_drawn(single, single, 3).sum(axis=(1, 2)).nonzero()[0].tolist() == [9]
    with pytest.raises(ValueError, match="drawn on no slice"):
        ContourInterpolation().segment_drawn(drawn, drawn, 5)


def test_organs_walked_in_step_get_what_each_gets_alone_in_shared_calls():
    """Two organs of one volume walk in step: each comes out as when walked alone, while the method
    is called about as often as for the longer organ alone (both organs' slices in one batch)."""
    image, label = drifting_organ()
    yy, xx = np.mgrid[:SIZE, :SIZE]
    second = np.zeros_like(label)
    for z in range(8, 15):  # a shorter, still disc lower down: another organ
        disc = (yy - 48) ** 2 + (xx - 20) ** 2 < 36
        image[z][disc], second[z][disc] = 0.9, 1
    organs = [{12: label[12] == 1}, {11: second[11] == 1}]
    alone, calls_alone = [], []
    for drawn in organs:
        method = LocalTracker(DRIFT)
        alone.append(propagate_organ(method, image, drawn))
        calls_alone.append(method.calls)
    method = LocalTracker(DRIFT)
    together = propagate_organs(method, image, organs)
    for (scores, masks), (alone_scores, alone_masks) in zip(together, alone):
        np.testing.assert_array_equal(masks, alone_masks)
        np.testing.assert_array_equal(scores, alone_scores)
    assert dice(together[1][1], second == 1) == pytest.approx(1.0)
    assert method.calls == max(calls_alone) < sum(calls_alone)
    clear_memo()
