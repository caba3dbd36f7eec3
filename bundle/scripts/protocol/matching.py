"""Which support slice serves which query slice, and which query slices are scored.

Three selections for one organ (label value), all returning a `SliceEpisodes`:

- `ep1_episodes`: the field's EP1 (SSL-ALPNet, ADNet, Q-Net, GMRD, SD-FSMIS). The query organ's
  slices are split into `n_chunks` (3) chunks; chunk j is served by the slice at the centre of the
  support organ's chunk j. Only query slices that contain the organ are segmented and scored:
  the query's ground truth tells where the organ is along z. That is an oracle localisation, and
  `SliceEpisodes.oracle` says so.
- `in_volume_episodes`: one volume is both support and query (a user labels the organ's middle
  slice and the method propagates it); the other organ slices are scored. The organ's z-extent
  comes from the ground truth as well, so this too is an oracle.
- `no_oracle_episodes`: every query slice is segmented and scored; each is served by the support
  organ slice nearest by relative position z / (D - 1). Nothing of the query's ground truth is used.

And the labeller's use, "label k slices, get the volume" (modes `draw1`, `draw2`, `draw3`, `draw5`):
`drawn_slices` picks the k slices a user would draw, evenly spaced within the organ's extent (k = 1:
its middle slice); every slice of the volume is then segmented and scored (`protocol.evaluate`).
The ground truth chooses only which slices are drawn, as a user looking at the scan would.

Chunk convention, as in ADNet's and Q-Net's test code (`np.linspace(0, C, n+1).astype(int)` over the
C organ slices of the query, and Ouyang et al.'s percentiles `(pcts * C).astype(int)` with
pcts = 1/6, 1/2, 5/6 over the C organ slices of the support). Computed here in integers, identical
for every C (checked against the float form for C < 400):
    query chunk j = organ slices at positions [floor(j C / n), floor((j+1) C / n))
    support shot i of chunk j = organ slice at position floor(C (2 (j K + i) + 1) / (2 n K))
so the query chunks differ in size by at most one, the extra slices in the later chunks (C = 10:
3, 3, 4; C = 11: 3, 4, 4), and the 1-shot supports sit at floor(C/6), floor(C/2), floor(5C/6) (C = 10:
1, 5, 8; "chunk start + chunk length // 2" would give 1, 4, 8, which neither SSL-ALPNet nor ADNet does).
The three conventions move support_copy's EP1 mean Dice by 0.3 point on CHAOST2, 1.3 on CMR.
K shots spread the same percentiles over the matched chunk: K = 1 gives the chunk centre. Positions
index the sorted list of slices that contain the organ (gaps in z are skipped, as in ADNet).
SSL-ALPNet assigns query chunks by z instead, floor((z - z_min) / ((z_max - z_min) / 3)) clipped
to [0, 2]; for contiguous organs it differs from the above only at some chunk borders.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "SliceEpisodes",
    "organ_slices",
    "ep1_episodes",
    "in_volume_episodes",
    "no_oracle_episodes",
    "EP1_ORACLE",
    "IN_VOLUME_ORACLE",
    "DRAW_MODES",
    "drawn_slices",
]

DRAW_MODES = {"draw1": 1, "draw2": 2, "draw3": 3, "draw5": 5}

EP1_ORACLE = ("query ground truth: only slices containing the organ are segmented and scored, and "
              "their z-extent sets the chunks (EP1 oracle localisation along z)")
IN_VOLUME_ORACLE = ("query ground truth: only slices containing the organ are segmented and scored "
                    "(oracle localisation along z); the support slice comes from the same volume")


@dataclass(frozen=True)
class SliceEpisodes:
    """Support slice indices (E, K) of the support volume, query slice indices (Q,) of the query
    volume, the episode (row of support_z) serving each query slice, and the query slices that are
    scored. `oracle` names what the query's ground truth was used for (None: nothing)."""

    support_z: np.ndarray
    query_z: np.ndarray
    query_episode: np.ndarray
    scored_z: np.ndarray
    oracle: str | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.support_z.ndim != 2:
            raise ValueError(f"support_z must be (E, K), got shape {self.support_z.shape}")
        if self.query_z.shape != self.query_episode.shape:
            raise ValueError("query_z and query_episode must have the same shape")
        if self.query_episode.size and (self.query_episode.min() < 0
                                        or self.query_episode.max() >= self.support_z.shape[0]):
            raise ValueError("query_episode must index rows of support_z")

    @property
    def n_episodes(self) -> int:
        return int(self.support_z.shape[0])

    @property
    def shots(self) -> int:
        return int(self.support_z.shape[1])


def organ_slices(label: np.ndarray, value: int) -> np.ndarray:
    """Sorted indices of the slices (axis 0) where any pixel has `value`."""
    return np.flatnonzero((np.asarray(label) == value).reshape(label.shape[0], -1).any(axis=1))


def _ints(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _check_shots(shots: int) -> None:
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")


def _support_positions(count: int, chunk: int, n_chunks: int, shots: int) -> list[int]:
    """Positions (into `count` organ slices) of the K shots spread over chunk `chunk`."""
    return [min(count - 1, count * (2 * (chunk * shots + i) + 1) // (2 * n_chunks * shots))
            for i in range(shots)]


def ep1_episodes(support_label: np.ndarray, query_label: np.ndarray, value: int,
                 shots: int = 1, n_chunks: int = 3) -> SliceEpisodes:
    """EP1 chunk matching between a support volume and a query volume for one organ.

    Returns n_chunks episodes (some may serve no query slice when the query organ spans fewer
    slices than chunks). A query without the organ gives no query slice at all; a support
    without it is an error.
    """
    _check_shots(shots)
    if n_chunks < 1:
        raise ValueError(f"n_chunks must be >= 1, got {n_chunks}")
    sup = organ_slices(support_label, value)
    if sup.size == 0:
        raise ValueError(f"label {value} is absent from the support volume: no support slice for EP1")
    qry = organ_slices(query_label, value)
    support_z = _ints([[sup[p] for p in _support_positions(sup.size, j, n_chunks, shots)]
                       for j in range(n_chunks)])
    bounds = [(j * qry.size) // n_chunks for j in range(n_chunks + 1)]
    episode = np.zeros(qry.size, dtype=np.int64)
    for j in range(n_chunks):
        episode[bounds[j]:bounds[j + 1]] = j
    return SliceEpisodes(support_z=support_z, query_z=_ints(qry), query_episode=episode,
                         scored_z=_ints(qry), oracle=EP1_ORACLE,
                         meta={"query_chunk_bounds": bounds, "support_organ_slices": int(sup.size)})


def in_volume_episodes(label: np.ndarray, value: int, shots: int = 1) -> SliceEpisodes:
    """Support = the organ's middle slice of this very volume (K slices spread over the organ,
    at Ouyang's percentiles, for K > 1); every other organ slice is a scored query."""
    _check_shots(shots)
    zs = organ_slices(label, value)
    if zs.size < shots:
        raise ValueError(f"label {value} is in {zs.size} slice(s), fewer than the {shots} shot(s) asked for")
    support = [int(zs[p]) for p in _support_positions(zs.size, 0, 1, shots)]
    query = np.setdiff1d(zs, support)
    return SliceEpisodes(support_z=_ints([support]), query_z=_ints(query),
                         query_episode=np.zeros(query.size, dtype=np.int64), scored_z=_ints(query),
                         oracle=IN_VOLUME_ORACLE)


def _relative(z: np.ndarray, depth: int) -> np.ndarray:
    return np.zeros(z.shape) if depth <= 1 else z / (depth - 1)


def no_oracle_episodes(support_label: np.ndarray, query_depth: int, value: int,
                       shots: int = 1) -> SliceEpisodes:
    """Every query slice is segmented and scored. Each is served by the support organ slice(s)
    nearest by relative position along the slice axis (z / (D - 1) in both volumes; the K nearest,
    ties to the lower z, for K shots). One episode per distinct support set."""
    _check_shots(shots)
    if query_depth < 1:
        raise ValueError(f"query_depth must be >= 1, got {query_depth}")
    sup = organ_slices(support_label, value)
    if sup.size < shots:
        raise ValueError(f"label {value} is in {sup.size} support slice(s), fewer than {shots} shot(s)")
    rel_s = _relative(sup.astype(float), support_label.shape[0])
    query = np.arange(query_depth, dtype=np.int64)
    rel_q = _relative(query.astype(float), query_depth)
    # stable sort on distance: equal distances keep the lower support z first
    nearest = np.argsort(np.abs(rel_q[:, None] - rel_s[None, :]), axis=1, kind="stable")[:, :shots]
    sets = np.sort(sup[nearest], axis=1)
    support_z, episode = np.unique(sets, axis=0, return_inverse=True)
    return SliceEpisodes(support_z=_ints(support_z), query_z=query,
                         query_episode=_ints(episode).reshape(-1), scored_z=query.copy(), oracle=None)


def drawn_slices(label: np.ndarray, value: int, k: int) -> np.ndarray:
    """The k slices a user draws: evenly spaced within the organ's extent, at positions
    (2i + 1) / (2k) of its sorted organ slices (k = 1: the middle one; k = 3: Ouyang's 1/6, 1/2, 5/6)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    zs = organ_slices(label, value)
    if zs.size < k:
        raise ValueError(f"label {value} is in {zs.size} slice(s), fewer than the {k} to draw")
    return _ints(sorted({int(zs[_support_positions(zs.size, 0, 1, k)[i]]) for i in range(k)}))
