"""Every speed lever of issue #10 against the plain fp32 path: same results within rounding.

The levers live in the product path (``scripts.network.speed``, ``postprocess``, the inferer's
latent reuse); ``bench/bench_cpu.py`` times them side by side with the plain path.
"""

import copy

import numpy as np
import pytest
import torch

from scripts.data.volumes import present_values
from scripts.engine.inferer import segment_volume
from scripts.network.postprocess import keep_largest_component_per_slice
from scripts.network.presets import build_segmenter
from scripts.network.speed import FrozenEncoder, adamw_options, compile_unet, default_channels_last

RTOL = 1e-4  # relative error allowed between a lever and the plain fp32 path (float32 rounding)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


def monai_per_slice(masks: np.ndarray) -> np.ndarray:
    """The plain path: MONAI's transform on every slice."""
    from monai.transforms import KeepLargestConnectedComponent

    keep = KeepLargestConnectedComponent(applied_labels=[1], is_onehot=False, connectivity=2)
    out = np.zeros_like(masks, dtype=bool)
    for index, mask in enumerate(masks):
        if mask.any():
            out[index] = np.asarray(keep(torch.as_tensor(mask[None].astype(np.uint8))))[0] > 0
    return out


def random_blobs(depth=12, size=64, seed=0) -> np.ndarray:
    """Slices with several blobs of different sizes, thin diagonal links, single pixels, empty slices."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((depth, size, size)), (0, 2, 2))
    masks = field > 0.15
    masks[2] = False  # an empty slice
    masks[3] = False
    masks[3, 5, 5] = masks[3, 6, 6] = True  # diagonal neighbours: one component under 8-connectivity
    masks[3, 20, 20] = True
    masks[-1] = True  # one component filling the slice
    return masks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_largest_component_equals_monai_per_slice(seed):
    from scipy import ndimage

    masks = random_blobs(seed=seed)
    fast, reference = keep_largest_component_per_slice(masks), monai_per_slice(masks)
    structure = np.ones((3, 3), bool)
    for z in range(len(masks)):
        labels, _ = ndimage.label(masks[z], structure=structure)
        sizes = np.bincount(labels.ravel())[1:]
        if len(sizes) and (sizes == sizes.max()).sum() > 1:  # a tie: either largest is right
            assert fast[z].sum() == reference[z].sum() == sizes.max()
        else:
            np.testing.assert_array_equal(fast[z], reference[z], err_msg=f"slice {z}")
    assert fast[3].sum() == 2  # the diagonal pair, not the single pixel
    assert not fast[2].any() and fast[-1].all()


def test_largest_component_edge_cases():
    assert not keep_largest_component_per_slice(np.zeros((3, 8, 8), bool)).any()
    one = np.zeros((1, 8, 8), bool)
    one[0, 2:4, 2:4] = True
    np.testing.assert_array_equal(keep_largest_component_per_slice(one), one)
    with pytest.raises(ValueError, match="Q, H, W"):
        keep_largest_component_per_slice(np.zeros((8, 8), bool))


def test_present_values_equal_unique():
    rng = np.random.default_rng(0)
    for label in (rng.integers(0, 5, (4, 16, 16)), np.array([[[0, 600], [200, 500]]]), np.zeros((2, 3, 3), int),
                  rng.integers(-3, 3, (2, 4, 4)), np.array([[[0.0, 2.0], [7.0, 0.0]]])):
        assert present_values(label) == [int(v) for v in np.unique(label) if v != 0]


# ---- the network: channels_last against contiguous fp32 ---------------------------------------------
def episode_batch(episodes=2, size=64, seed=0, channels=64):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(episodes, 1, size, size)
    mask[:, :, size // 4: size // 2, size // 4: 3 * size // 4] = 1
    latent = lambda: torch.randn(episodes, channels, size // 8, size // 8, generator=g)  # noqa: E731
    return dict(support_latent=latent(), support_mask=mask, query_latent=latent(),
                query_mask=mask.roll(3, dims=-1), shots=1)


@pytest.fixture(scope="module")
def compact_pair():
    torch.manual_seed(0)
    plain = build_segmenter(preset="compact", channels_last=False)
    fast = copy.deepcopy(plain).set_channels_last(True)
    assert fast.net.memory_format == torch.channels_last
    assert plain.net.memory_format == torch.contiguous_format
    return plain, fast


def test_channels_last_forward_equals_plain(compact_pair):
    plain, fast = compact_pair
    batch = episode_batch()
    with torch.no_grad():
        a = plain(batch["support_latent"], batch["support_mask"], batch["query_latent"])
        b = fast(batch["support_latent"], batch["support_mask"], batch["query_latent"])
    assert relative_error(b, a) < RTOL


def test_channels_last_training_step_equals_plain(compact_pair):
    """Loss and gradients of a training step (support pass, query pass, MSE + Dice)."""
    plain, fast = (copy.deepcopy(m).train() for m in compact_pair)
    batch = episode_batch(seed=1)
    losses, grads = [], []
    for model in (plain, fast):
        model.net.zero_grad()
        loss = model.loss(batch)["loss"]
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append({n: p.grad.detach().clone() for n, p in model.net.named_parameters() if p.grad is not None})
    assert abs(losses[1] - losses[0]) <= RTOL * abs(losses[0])
    assert grads[0].keys() == grads[1].keys() and any(n.startswith("conv_in_ref") for n in grads[0])
    flat = [torch.cat([g[n].flatten() for n in grads[0]]) for g in grads]
    assert relative_error(flat[1], flat[0]) < RTOL
    for name in grads[0]:  # per tensor, with an absolute floor for gradients that are nearly zero
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-3, atol=1e-6, msg=name)


def test_fused_adamw_equals_foreach():
    """The same parameters and gradients through for-each and fused AdamW, a few steps."""
    options = adamw_options("cpu")
    if not options:
        pytest.skip("this torch has no fused AdamW on the CPU")
    torch.manual_seed(0)
    params = [torch.randn(64, 32, 3, 3), torch.randn(128), torch.randn(16, 8).contiguous(memory_format=torch.contiguous_format)]
    pair = [[torch.nn.Parameter(p.clone()) for p in params] for _ in range(2)]
    optimizers = [torch.optim.AdamW(pair[0], lr=1e-3, weight_decay=0.01),
                  torch.optim.AdamW(pair[1], lr=1e-3, weight_decay=0.01, **options)]
    for step in range(3):
        grads = [torch.randn_like(p) for p in params]
        for group, optimizer in zip(pair, optimizers):
            for p, g in zip(group, grads):
                p.grad = g.clone()
            optimizer.step()
    for a, b in zip(*pair):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_channels_last_tiny_autoencoder_equals_plain():
    """TAEF2's architecture (random weights: the format, not the weights, is under test)."""
    from diffusers import AutoencoderTiny

    from scripts.network.autoencoders import TinyAutoencoder

    torch.manual_seed(0)
    model = AutoencoderTiny(latent_channels=32, encoder_block_out_channels=(16, 16, 16, 16),
                            decoder_block_out_channels=(16, 16, 16, 16), num_encoder_blocks=(1, 1, 1, 1),
                            num_decoder_blocks=(1, 1, 1, 1), scaling_factor=1.0, force_upcast=False)
    plain = TinyAutoencoder(model, 32)
    fast = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    assert fast.memory_format == torch.channels_last and plain.memory_format == torch.contiguous_format
    x = torch.rand(3, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        a, b = plain.encode(x), fast.encode(x)
        assert b.is_contiguous()  # latents leave in the standard layout (caches, indexing)
        assert relative_error(b, a) < RTOL
        assert relative_error(fast.decode(a), plain.decode(a)) < RTOL
        frozen = FrozenEncoder(fast)  # the TorchScript-frozen encoder, other batch and size than traced
        for shape in ((3, 1, 64, 64), (1, 1, 32, 48)):
            y = torch.rand(*shape) * 2 - 1
            got, eager = frozen(y), plain.encode(y)
            assert frozen.built
            assert got.is_contiguous() and got.shape == eager.shape and relative_error(got, eager) < RTOL
    assert not copy.deepcopy(frozen).built  # copies rebuild it
    x.requires_grad_(True)
    assert frozen(x).requires_grad  # with gradients wanted, the eager encoder runs


def test_frozen_taef2_encoder_equals_eager():
    from scripts.network.autoencoders import build_autoencoder
    from scripts.network.presets import resolve_weights_path

    eager = build_autoencoder("taef2", resolve_weights_path(None, "taef2"))  # the committed models/taef2
    frozen = FrozenEncoder(copy.deepcopy(eager))
    x = torch.rand(2, 1, 256, 256) * 2 - 1
    with torch.no_grad():
        assert relative_error(frozen(x), eager.encode(x)) < RTOL
    assert frozen.built


def test_segmenter_encodes_through_its_frozen_encoder_on_cpu_and_copies_keep_their_own():
    segmenter = build_segmenter(preset="tiny", autoencoder="taef2")
    assert isinstance(segmenter.fast_encoder, FrozenEncoder) and segmenter.fast_encoder.autoencoder is segmenter.autoencoder
    images = torch.rand(3, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        eager = segmenter.autoencoder.encode(images)
        assert relative_error(segmenter.encode_images(images), eager) < RTOL
    assert segmenter.fast_encoder.built
    twin = copy.deepcopy(segmenter)
    assert twin.fast_encoder.autoencoder is twin.autoencoder and not twin.fast_encoder.built
    assert build_segmenter(preset="tiny", autoencoder="unshuffle").fast_encoder is None  # nothing to freeze


def test_build_segmenter_defaults_to_channels_last_on_cpu():
    assert build_segmenter(preset="tiny").net.memory_format == torch.channels_last
    training = build_segmenter(preset="tiny", autoencoder="taef2", channels_last=False)  # as train.yaml on a CPU
    assert training.net.memory_format == torch.contiguous_format
    assert training.autoencoder.memory_format == torch.channels_last  # frozen: inference only


def test_compiled_unet_equals_eager():
    """torch.compile's graph capture of the U-Net with its K/V bank (aot_eager: no C++ build, so the
    test stays fast; inductor's kernels are timed by the benches and compared there)."""
    torch.manual_seed(0)
    eager = build_segmenter(preset="tiny", channels_last=False).eval()
    compiled = copy.deepcopy(eager)
    assert compile_unet(compiled.net, backend="aot_eager", dynamic=False)
    keys = set(compiled.net.state_dict())
    assert keys == set(eager.net.state_dict())  # checkpoints keep their keys
    batch = episode_batch(seed=2)
    with torch.no_grad():
        a = eager(batch["support_latent"], batch["support_mask"], batch["query_latent"])
        b = compiled(batch["support_latent"], batch["support_mask"], batch["query_latent"])
    assert relative_error(b, a) < RTOL


def test_channels_last_defaults():
    assert default_channels_last("cpu") and not default_channels_last("cpu", training=True)
    assert not default_channels_last("cuda")


# ---- the inferer: every slice encoded once, results unchanged ----------------------------------------
class CountingSegmenter:
    """Wraps a segmenter, counts encoded slices, optionally drops the inferer's support latents (the
    plain path, where each organ re-encodes its supports)."""

    def __init__(self, segmenter, reuse: bool):
        self.segmenter, self.reuse, self.encoded = segmenter, reuse, 0
        encode = segmenter.encode_images

        def counting(images, chunk=None):
            self.encoded += images.shape[0]
            return encode(images, chunk)

        segmenter.encode_images = counting

    def encode_images_cached(self, images):
        return self.segmenter.encode_images_cached(images)

    def cached_latents(self, images):
        return self.segmenter.cached_latents(images)

    def latents_of(self, images):
        return self.segmenter.latents_of(images)

    def predict_scores(self, *args, **kwargs):
        if not self.reuse:
            kwargs.pop("support_latents", None)
        return self.segmenter.predict_scores(*args, **kwargs)

    def binarize(self, scores, support_masks=None):
        return self.segmenter.binarize(scores, support_masks)


@pytest.mark.parametrize("same_volume", [True, False])
def test_inferer_latent_reuse_equals_plain(same_volume):
    rng = np.random.default_rng(0)
    depth, size = 10, 64
    query = rng.uniform(-1, 1, (depth, size, size)).astype(np.float32)
    support = query if same_volume else rng.uniform(-1, 1, (depth, size, size)).astype(np.float32)
    label = np.zeros((depth, size, size), np.int32)
    label[2:8, 10:30, 10:30] = 1
    label[3:6, 40:50, 35:55] = 2
    results = {}
    for reuse in (False, True):
        torch.manual_seed(0)
        method = CountingSegmenter(build_segmenter(preset="tiny", channels_last=False).eval(), reuse)
        result = segment_volume(method, support, label, query, max_shots=3, same_volume=same_volume,
                                mode="nearest")  # propagation encodes only what it walks (below)
        results[reuse] = (result.label, method.encoded)
    np.testing.assert_array_equal(results[True][0], results[False][0])
    # plain: the query (10) plus every organ's episodes' supports; ours: each slice once
    assert results[True][1] == (depth if same_volume else depth + 6) < results[False][1]


def test_a_cached_support_image_is_not_encoded_again():
    """Cross-patient, with the whole support image in the latent cache (warmed by the server, or
    segmented before): only the query is encoded, and the result is the plain path's."""
    rng = np.random.default_rng(1)
    depth, size = 10, 64
    query, support = (rng.uniform(-1, 1, (depth, size, size)).astype(np.float32) for _ in range(2))
    label = np.zeros((depth, size, size), np.int32)
    label[2:8, 10:30, 10:30] = 1
    results = {}
    for warm in (False, True):
        torch.manual_seed(0)
        method = CountingSegmenter(build_segmenter(preset="tiny", channels_last=False).eval(), reuse=True)
        if warm:
            method.encode_images_cached(support)
            method.encoded = 0
        results[warm] = (segment_volume(method, support, label, query, max_shots=3).label, method.encoded)
    np.testing.assert_array_equal(results[True][0], results[False][0])
    assert results[True][1] == depth < results[False][1]


def test_slice_latents_encode_each_asked_slice_once_and_equal_the_whole_stack():
    from scripts.network.slice_latents import LatentCache

    torch.manual_seed(0)
    segmenter = build_segmenter(preset="tiny", channels_last=False).eval()
    images = np.random.default_rng(2).uniform(-1, 1, (9, 64, 64)).astype(np.float32)
    whole = segmenter.encode_images(torch.as_tensor(images)[:, None])
    cache = LatentCache(size=2)
    lazy = cache.get(images, segmenter.encode_images)
    torch.testing.assert_close(lazy[[4, 2]], whole[[4, 2]], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lazy[np.array([[2, 3], [4, 8]])], whole[[2, 3, 4, 8]], rtol=1e-5, atol=1e-5)
    assert (cache.stats["hits"], cache.stats["misses"], cache.stats["slices_encoded"]) == (0, 1, 4)
    assert cache.stats["encode_s"] > 0 and not lazy.complete
    torch.testing.assert_close(cache.get(images.copy(), segmenter.encode_images).all(), whole, rtol=1e-5, atol=1e-5)
    assert (cache.stats["hits"], cache.stats["misses"], cache.stats["slices_encoded"]) == (1, 1, 9) and lazy.complete
    with pytest.raises(IndexError):
        lazy[[9]]
    for other in range(2):  # two other volumes push the first out
        cache.get(images + other + 1, segmenter.encode_images)
    assert cache.peek(images) is None and len(cache) == 2


def test_propagation_encodes_only_the_slices_its_walks_reach():
    """One organ on 4 of 16 slices, drawn on one: the walk encodes its slices and the one past each
    end where it stops, not the volume; the result is that of the whole stack encoded first."""
    rng = np.random.default_rng(3)
    depth, size = 16, 64
    image = rng.uniform(-1, 1, (depth, size, size)).astype(np.float32)
    label = np.zeros((depth, size, size), np.int32)
    label[6:10, 20:40, 20:40] = 1
    drawn = np.where(np.arange(depth)[:, None, None] == 8, label, 0)
    results = {}
    for ahead in (False, True):
        torch.manual_seed(0)
        method = CountingSegmenter(build_segmenter(preset="tiny", channels_last=False).eval(), reuse=True)
        if ahead:
            method.encode_images_cached(image)
        results[ahead] = (segment_volume(method, image, drawn, image, same_volume=True).label, method.encoded)
    np.testing.assert_array_equal(results[False][0], results[True][0])
    walked = int((results[False][0] > 0).any(axis=(1, 2)).sum())
    assert walked + 1 <= results[False][1] <= walked + 2 < depth == results[True][1]


class SliceTable:
    """Latents by slice index, standing in for the dataset's latent cache."""

    def __init__(self, latents: torch.Tensor):
        self.latents = latents

    def slices(self, pids, zs) -> torch.Tensor:
        return self.latents[torch.as_tensor(zs)]


def test_authors_style_step_equals_batched_step():
    """The benches' authors-style baseline (one episode per forward, accumulated gradients) makes
    the same update as the product's batched step, so timing them side by side is fair."""
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    from monai.inferers import SimpleInferer

    from scripts.engine.training import EpisodeIteration, EpisodeObjective
    from scripts.network.episode_loss import EpisodeLoss

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from plain import authors_training_step

    torch.manual_seed(0)
    base = build_segmenter(preset="tiny", channels_last=False)
    g = torch.Generator().manual_seed(2)
    latents = torch.randn(6, base.net.latent_channels, 8, 8, generator=g)
    masks = torch.zeros(6, 1, 64, 64)
    masks[:, :, 16:40, 12:44] = 1
    masks[3:, :, :, :20] = 0  # different masks per episode: the Dice term is per episode
    batch = {"shots": 1, "support_pid": ["p"] * 3, "support_z": torch.tensor([0, 1, 2]), "support_mask": masks[:3],
             "query_pid": ["p"] * 3, "query_z": torch.tensor([3, 4, 5]), "query_mask": masks[3:]}
    updated = []
    for authors in (False, True):
        segmenter = copy.deepcopy(base)
        engine = SimpleNamespace(state=SimpleNamespace(device=torch.device("cpu")),
                                 network=EpisodeObjective(segmenter), inferer=SimpleInferer(),
                                 loss_function=EpisodeLoss(),
                                 optimizer=torch.optim.AdamW(segmenter.net.parameters(), lr=1e-3))
        iteration = EpisodeIteration(SliceTable(latents), augment=None, ema=None, grad_clip=1.0)
        out = authors_training_step(iteration, engine, batch) if authors else iteration(engine, batch)
        updated.append((out["loss"], torch.cat([p.detach().flatten() for p in segmenter.net.parameters()])))
    (loss_batched, after_batched), (loss_authors, after_authors) = updated
    before = torch.cat([p.detach().flatten() for p in base.net.parameters()])
    assert abs(loss_authors - loss_batched) <= 1e-5 * abs(loss_batched)
    assert (after_batched - before).abs().max() > 1e-5  # the step moved the weights
    assert relative_error(after_authors - before, after_batched - before) < 1e-3
