"""Folds and support/query matching on hand-built label volumes, with exact indices."""

import numpy as np
import pytest

from scripts.protocol.folds import make_folds, support_pid
from scripts.protocol.matching import (
    ep1_episodes,
    in_volume_episodes,
    no_oracle_episodes,
    organ_slices,
)

CHAOS_PIDS = [1, 2, 3, 5, 8, 10, 13, 15, 19, 20, 21, 22, 31, 32, 33, 34, 36, 37, 38, 39]


def labelled(depth, organ_z, value=1, size=8):
    """A (depth, size, size) label volume with `value` in a small square on slices `organ_z`."""
    lab = np.zeros((depth, size, size), np.int32)
    for z in organ_z:
        lab[z, 2:5, 2:5] = value
    return lab


def test_folds_chaos_contiguous_numeric():
    shuffled = [str(p) for p in reversed(CHAOS_PIDS)]
    folds = make_folds(shuffled, 5)
    assert folds[0] == ["1", "2", "3", "5"]
    assert folds[4] == ["36", "37", "38", "39"]
    assert sum(folds, []) == [str(p) for p in CHAOS_PIDS]
    assert support_pid(folds[0]) == "1" and support_pid(folds[0], -1) == "5"


def test_folds_uneven_and_errors():
    assert [len(f) for f in make_folds(range(1, 12), 5)] == [3, 2, 2, 2, 2]
    assert [len(f) for f in make_folds(range(1, 36), 5)] == [7] * 5
    with pytest.raises(ValueError, match="fewer than 2 volumes"):
        make_folds(range(1, 10), 5)
    with pytest.raises(ValueError, match="duplicate"):
        make_folds(["1", "1", "2", "3"], 2)
    with pytest.raises(ValueError, match="outside"):
        support_pid(["1", "2"], 2)


def test_ep1_chunks_exact():
    # support organ on z = 5..14 (C = 10), query organ on z = 3..13 (C = 11)
    support, query = labelled(20, range(5, 15)), labelled(16, range(3, 14))
    ep = ep1_episodes(support, query, 1)
    # support positions floor(10/6), floor(10/2), floor(50/6) = 1, 5, 8 -> z = 6, 10, 13
    assert ep.support_z.tolist() == [[6], [10], [13]]
    # query chunks over 11 slices: [0, 3), [3, 7), [7, 11) -> z 3-5, 6-9, 10-13
    assert ep.query_z.tolist() == list(range(3, 14))
    assert ep.query_episode.tolist() == [0] * 3 + [1] * 4 + [2] * 4
    assert ep.scored_z.tolist() == list(range(3, 14))
    assert "oracle" in ep.oracle


def test_ep1_matches_adnet_float_form():
    # ADNet: support (pcts * C).astype(int), query np.linspace(0, C, 4).astype(int)
    for c_s, c_q in [(1, 1), (2, 7), (6, 9), (13, 20), (31, 44)]:
        ep = ep1_episodes(labelled(c_s, range(c_s)), labelled(c_q, range(c_q)), 1)
        pcts = np.array([1 / 6, 1 / 6 + 1 / 3, 1 / 6 + 2 / 3])
        assert ep.support_z[:, 0].tolist() == (pcts * c_s).astype(int).tolist()
        bounds = np.linspace(0, c_q, 4).astype(int)
        assert ep.meta["query_chunk_bounds"] == bounds.tolist()


def test_ep1_skips_gaps_and_k_shot():
    # organ slices with a gap: positions index the list of organ slices, not z
    support = labelled(30, [2, 3, 4, 10, 11, 12, 13, 14, 15, 16, 17, 18])  # C = 12
    query = labelled(12, [1, 2, 4, 5, 6, 9])  # C = 6
    ep = ep1_episodes(support, query, 1, shots=2)
    # chunk j, shot i: position floor(12 (2 (2j + i) + 1) / 12) = 1, 3, 5, 7, 9, 11
    assert ep.support_z.tolist() == [[3, 10], [12, 14], [16, 18]]
    assert ep.query_z.tolist() == [1, 2, 4, 5, 6, 9]
    assert ep.query_episode.tolist() == [0, 0, 1, 1, 2, 2]


def test_ep1_absent_organs():
    with pytest.raises(ValueError, match="absent from the support"):
        ep1_episodes(labelled(5, []), labelled(5, [1]), 1)
    ep = ep1_episodes(labelled(5, [1, 2]), labelled(5, []), 1)
    assert ep.query_z.size == 0 and ep.scored_z.size == 0


def test_in_volume_never_scores_support():
    lab = labelled(20, range(4, 13))  # C = 9, middle position 4 -> z = 8
    ep = in_volume_episodes(lab, 1)
    assert ep.support_z.tolist() == [[8]]
    assert 8 not in ep.scored_z and 8 not in ep.query_z
    assert ep.scored_z.tolist() == [4, 5, 6, 7, 9, 10, 11, 12]
    assert set(ep.query_episode.tolist()) == {0}
    ep3 = in_volume_episodes(lab, 1, shots=3)
    assert ep3.support_z.tolist() == [[5, 8, 11]]  # positions floor(9/6), floor(9/2), floor(45/6)
    assert not set(ep3.support_z.ravel()) & set(ep3.scored_z.tolist())
    assert ep3.scored_z.size == 6


def test_no_oracle_scores_every_slice_by_relative_position():
    support = labelled(11, [4, 5, 6])  # relative positions 0.4, 0.5, 0.6
    ep = no_oracle_episodes(support, 6, 1)  # query relative positions 0, .2, .4, .6, .8, 1
    assert ep.scored_z.tolist() == list(range(6)) == ep.query_z.tolist()
    assert ep.oracle is None
    served = ep.support_z[ep.query_episode, 0].tolist()
    assert served == [4, 4, 4, 6, 6, 6]
    assert ep.support_z.tolist() == [[4], [6]]  # one episode per distinct support slice
    ep2 = no_oracle_episodes(support, 6, 1, shots=2)
    assert ep2.support_z[ep2.query_episode].tolist() == [[4, 5]] * 3 + [[5, 6]] * 3


def test_organ_slices_uses_any_pixel():
    lab = np.zeros((4, 6, 6), np.int32)
    lab[1, 0, 0] = 3
    lab[2] = 1
    assert organ_slices(lab, 3).tolist() == [1]
    assert organ_slices(lab, 1).tolist() == [2]
