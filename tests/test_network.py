"""The SD-FSMIS network: shapes, the support K/V bank, checkpointing, pretrained loading, scheduler."""

from pathlib import Path

import numpy as np
import pytest
import torch

from scripts.network.autoencoders import WeightsError, build_autoencoder
from scripts.network.one_step import make_one_step_scheduler, mask_latent_from_output, training_target
from scripts.network.pipeline import EmptySupportError
from scripts.network.postprocess import keep_largest_component_3d, keep_support_component_3d
from scripts.network.model_config import ModelConfig
from scripts.network.model_file import load_checkpoint_file, save_checkpoint_file
from scripts.network.presets import build_segmenter
from scripts.network.qe import QueryEnhancement
from shared_paths import shared_path

SIZE = 64  # slices of 64x64 -> 8x8 latents: enough for the tiny U-Net's two levels


def make_inputs(episodes, shots, queries, seed=0, size=SIZE):
    g = torch.Generator().manual_seed(seed)
    support_image = torch.rand(episodes * shots, 1, size, size, generator=g) * 2 - 1
    support_mask = torch.zeros(episodes * shots, 1, size, size)
    support_mask[:, :, size // 4: size // 2, size // 4: 3 * size // 4] = 1
    query_image = torch.rand(queries, 1, size, size, generator=g) * 2 - 1
    return support_image, support_mask, query_image


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_segmenter(preset="tiny").eval()


@pytest.mark.parametrize("shots", [1, 3])
def test_output_shapes_for_k_shots(tiny, shots):
    support_image, support_mask, query_image = make_inputs(2, shots, 4)
    with torch.no_grad():
        velocity = tiny(tiny.encode_images(support_image), support_mask, tiny.encode_images(query_image), shots=shots)
    assert velocity.shape == (4, 64, SIZE // 8, SIZE // 8)
    assert torch.isfinite(velocity).all()


def test_batched_queries_equal_per_slice_results(tiny):
    support_image, support_mask, query_image = make_inputs(1, 3, 5, seed=1)
    s_lat, q_lat = tiny.encode_images(support_image), tiny.encode_images(query_image)
    with torch.no_grad():
        batched = tiny(s_lat, support_mask, q_lat, shots=3)
        single = torch.cat([tiny(s_lat, support_mask, q_lat[i:i + 1], shots=3) for i in range(5)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)


def test_support_changes_the_query_output(tiny):
    """The bank is really read: another support gives another query output."""
    support_image, support_mask, query_image = make_inputs(1, 1, 2, seed=2)
    q_lat = tiny.encode_images(query_image)
    with torch.no_grad():
        a = tiny(tiny.encode_images(support_image), support_mask, q_lat)
        b = tiny(tiny.encode_images(-support_image), support_mask, q_lat)
    assert (a - b).abs().max() > 1e-4


def test_query_episode_routes_each_query_to_its_support(tiny):
    support_image, support_mask, query_image = make_inputs(2, 1, 2, seed=3)
    s_lat, q_lat = tiny.encode_images(support_image), tiny.encode_images(query_image)
    with torch.no_grad():
        routed = tiny(s_lat, support_mask, q_lat, query_episode=torch.tensor([1, 0]))
        first = tiny(s_lat[1:], support_mask[1:], q_lat[:1])
        second = tiny(s_lat[:1], support_mask[:1], q_lat[1:])
    torch.testing.assert_close(routed, torch.cat([first, second]), rtol=1e-4, atol=1e-5)


def test_one_support_pass_serves_every_query_chunk(tiny, monkeypatch):
    """predict_scores runs the supports once however many chunks the queries take, and gives what
    the full forward gives chunk by chunk; the bank refuses a read that names no episodes."""
    support_image, support_mask, query_image = make_inputs(2, 2, 5, seed=4)
    episode = np.array([0, 1, 1, 0, 1])
    passes = []
    support_pass = tiny.net.support_pass
    monkeypatch.setattr(tiny.net, "support_pass", lambda *a, **k: passes.append(1) or support_pass(*a, **k))
    monkeypatch.setattr(tiny, "query_chunk", 2)  # 5 queries: 3 chunks
    supports = support_image[:, 0].reshape(2, 2, SIZE, SIZE).numpy()
    masks = support_mask[:, 0].reshape(2, 2, SIZE, SIZE).numpy()
    scores = tiny.predict_scores(supports, masks, query_image[:, 0].numpy(), episode)
    assert len(passes) == 1
    with torch.no_grad():
        velocity = tiny(tiny.encode_images(support_image), support_mask, tiny.encode_images(query_image),
                        torch.as_tensor(episode), shots=2)
        expected = tiny.decode_scores(velocity, tiny.encode_images(query_image))[:, 0].numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
    memory = support_pass(tiny.encode_images(support_image), tiny.encode_masks(support_mask), support_mask, 2)
    with pytest.raises(RuntimeError, match="for_queries"):
        memory.bank.support_for_queries(next(iter(memory.bank.entries)), 5)


def test_query_enhancement_averages_the_query_pixels_that_look_like_the_support_foreground():
    # support: feature a on the mask, b off it; query: a on its own patch, b elsewhere
    a, b = torch.tensor([1.0, 0.0, 0.2]), torch.tensor([0.0, 1.0, 0.2])
    support = b[None, :, None, None].repeat(1, 1, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :3, :3], support[..., :3, :3] = 1, a[None, :, None, None]
    query = b[None, :, None, None].repeat(1, 1, 8, 8)
    query[..., 5:, 5:] = 2 * a[None, :, None, None]
    qe = QueryEnhancement(threshold=0.7, temperature=0.1)
    probability, weights = qe.select(support, mask, query, torch.tensor([0]), shots=1)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[5:, 5:] = True
    assert torch.equal(weights[0, 0] > 0, expected) and (probability[0, 0][expected] > 0.7).all()
    assert torch.allclose(qe(support, mask, query, torch.tensor([0]), 1)[0, :, 0, 0], 2 * a)
    # nothing passes the threshold: the top-k most foreground-like pixels are averaged instead
    strict = QueryEnhancement(threshold=0.999, top_k=4, temperature=1.0)
    probability, weights = strict.select(support, mask, query, torch.tensor([0]), shots=1)
    assert (probability < 0.999).all() and int(weights.sum()) == 4
    assert int(weights[0, 0, 5:, 5:].sum()) == 4


def test_gradients_equal_with_and_without_gradient_checkpointing():
    torch.manual_seed(0)
    model = build_segmenter(preset="tiny", dice_weight=0.5)
    support_image, support_mask, query_image = make_inputs(2, 1, 2, seed=4)
    batch = dict(support_latent=model.encode_images(support_image), support_mask=support_mask,
                 query_latent=model.encode_images(query_image), query_mask=support_mask[:2], shots=1)

    def gradients():
        model.net.zero_grad()
        model.loss(batch)["loss"].backward()
        return {n: p.grad.clone() for n, p in model.net.named_parameters() if p.grad is not None}

    plain = gradients()
    model.net.unet.enable_gradient_checkpointing()
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys()
    assert any(k.startswith("conv_in_ref") for k in plain)  # the support pass receives gradients
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], rtol=1e-4, atol=1e-6, msg=name)


def test_scheduler_identity_recovers_the_mask_latent():
    scheduler = make_one_step_scheduler()
    mask_latent, image_latent = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    target = training_target(scheduler, mask_latent, image_latent)
    torch.testing.assert_close(target, -mask_latent)
    torch.testing.assert_close(mask_latent_from_output(scheduler, target, image_latent), mask_latent)
    # pixel-unshuffled masks (64 channels) beside a 32-channel TAEF2 image latent: the same identity
    wide_mask, narrow_image = torch.randn(2, 64, 8, 8), torch.randn(2, 32, 8, 8)
    wide_target = training_target(scheduler, wide_mask, narrow_image)
    torch.testing.assert_close(wide_target, -wide_mask)
    torch.testing.assert_close(mask_latent_from_output(scheduler, wide_target, narrow_image), wide_mask)


def test_empty_support_mask_is_refused(tiny):
    support_image, support_mask, query_image = make_inputs(1, 1, 2)
    with pytest.raises(EmptySupportError, match="support mask is empty"):
        tiny.predict_scores(support_image[:, 0][None].numpy(), np.zeros((1, 1, SIZE, SIZE), np.float32),
                            query_image[:, 0].numpy(), np.zeros(2, int))


def test_predict_scores_and_binarize(tiny):
    support_image, support_mask, query_image = make_inputs(1, 2, 3)
    scores = tiny.predict_scores(support_image[:, 0][None].numpy(), support_mask[:, 0][None].numpy(),
                                 query_image[:, 0].numpy(), np.zeros(3, int))
    assert scores.shape == (3, SIZE, SIZE) and scores.dtype == np.float32
    masks = tiny.binarize(scores, support_mask[:, 0].numpy())
    assert masks.shape == scores.shape and masks.dtype == bool
    with pytest.raises(ValueError, match="pass them"):  # the default 3D step picks by the support
        tiny.binarize(scores)


def test_binarize_keeps_the_organ_not_a_distant_look_alike(tiny):
    """The largest 3D component of the query stack stays (under face connectivity: a blob overlapping
    the organ on the next slice is part of it); a blob on a slice of its own goes, though it is that
    slice's largest and the per-slice step alone keeps it, and so does one touching the organ only
    at a corner."""
    scores = -np.ones((7, 16, 16), np.float32)
    scores[1:4, 4:10, 4:10] = 1  # the organ on slices 1-3
    scores[4, 8:12, 8:12] = 1  # overlaps slice 3's organ: part of it
    scores[0, 10:12, 10:12] = 1  # meets slice 1's organ only at the corner (9, 9) -> (10, 10)
    scores[6, 0:3, 0:3] = 1  # a look-alike two slices away
    segmenter = tiny.with_net(tiny.net)
    segmenter.threshold, segmenter.threshold_mode, segmenter.component_3d = 0.0, "absolute", "largest"
    organ = (scores > 0) & np.isin(np.arange(7), [1, 2, 3, 4])[:, None, None]
    np.testing.assert_array_equal(segmenter.binarize(scores), organ)
    support = np.zeros((1, 16, 16), np.float32)
    support[0, 5:9, 5:9] = 1  # the footprint reaches the look-alikes too: the organ has most voxels on it
    segmenter.component_3d = "support"
    np.testing.assert_array_equal(segmenter.binarize(scores, support), organ)
    segmenter.keep_largest_3d = False
    assert segmenter.binarize(scores)[6].sum() == 9 and segmenter.binarize(scores)[0].sum() == 4
    assert not segmenter.binarize(-np.ones((3, 8, 8), np.float32)).any()
    # a call's own threshold (the app's per request) cuts as the model's would, and leaves the model's as it was
    assert not segmenter.binarize(scores, threshold=1.0).any()
    np.testing.assert_array_equal(segmenter.binarize(scores * 0.5, threshold=0.9, threshold_mode="relative"),
                                  segmenter.binarize(scores))
    assert (segmenter.threshold, segmenter.threshold_mode) == (0.0, "absolute")
    with pytest.raises(ValueError, match="Q, H, W"):
        keep_largest_component_3d(np.zeros((8, 8), bool))


def test_support_rule_keeps_the_component_on_the_support_not_the_larger_look_alike(tiny):
    """``component_3d: support``: of two organs the network finds (a right-kidney support, both
    kidneys predicted), the one on the support's footprint stays when the larger lies off it; the
    footprint is grown by the margin (another patient's organ sits a few pixels off); with no
    component on it, the largest stays, and so does a largest with a fair share on it, even if a
    smaller blob lies wholly on it (an organ shifted half off the support's position)."""
    scores = -np.ones((4, 40, 40), np.float32)
    scores[:, 8:14, 8:14] = 1  # the organ the support shows: 36 px per slice
    scores[:, 20:36, 20:36] = 1  # its look-alike: 256 px per slice
    support = np.zeros((2, 1, 40, 40), np.float32)
    support[0, 0, 6:12, 6:12] = 1
    segmenter = tiny.with_net(tiny.net)
    segmenter.threshold, segmenter.threshold_mode = 0.0, "absolute"
    organ = np.zeros((4, 40, 40), bool)
    organ[:, 8:14, 8:14] = True
    look_alike = (scores > 0) & ~organ
    assert segmenter.component_3d == "support"  # the default
    np.testing.assert_array_equal(segmenter.binarize(scores, support), organ)
    segmenter.component_3d = "largest"
    np.testing.assert_array_equal(segmenter.binarize(scores, support), look_alike)
    segmenter.component_3d = "support"
    with pytest.raises(ValueError, match="pass them"):
        segmenter.binarize(scores)
    near = np.zeros((1, 40, 40), np.float32)
    near[0, 0:4, 8:14] = 1  # 5 px above the organ: reached only through the margin
    np.testing.assert_array_equal(keep_support_component_3d(scores > 0, near, margin=8), organ)
    np.testing.assert_array_equal(keep_support_component_3d(scores > 0, near, margin=0), look_alike)
    shifted = np.zeros((1, 40, 40), np.float32)
    shifted[0, 8:25, 8:26] = 1  # all of the organ (144 voxels), 120 of the look-alike's 1024 (> 10 %)
    np.testing.assert_array_equal(keep_support_component_3d(scores > 0, shifted, margin=0), look_alike)
    np.testing.assert_array_equal(keep_support_component_3d(scores > 0, shifted, margin=0, min_share=0.2), organ)
    with pytest.raises(ValueError, match="empty"):
        keep_support_component_3d(scores > 0, np.zeros((1, 40, 40)))
    with pytest.raises(ValueError, match="slice shape"):
        keep_support_component_3d(scores > 0, np.ones((1, 20, 20)))
    with pytest.raises(ValueError, match="component_3d"):  # the config refuses it, set or built
        segmenter.component_3d = "nearest"
    with pytest.raises(ValueError, match="component_3d"):
        ModelConfig(component_3d="nearest")
    assert segmenter.component_3d == "support"


def test_checkpoint_round_trip_and_mismatch(tmp_path, tiny):
    path = tmp_path / "model.pt"
    save_checkpoint_file(tiny, path)
    again = build_segmenter(checkpoint=path)
    for (name, a), (_, b) in zip(tiny.net.state_dict().items(), again.net.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    stored = load_checkpoint_file(path)
    stored["state_dict"]["conv_in.weight"] = stored["state_dict"]["conv_in.weight"][:, :3]
    torch.save(stored, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match="does not fit preset 'tiny'"):
        build_segmenter(checkpoint=tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match="checkpoint not found"):
        build_segmenter(checkpoint=tmp_path / "absent.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read checkpoint"):
        build_segmenter(checkpoint=tmp_path / "corrupt.pt")


def test_missing_weights_say_what_was_expected(tmp_path):
    with pytest.raises(WeightsError, match="taef2_encoder.pth"):
        build_autoencoder("taef2", tmp_path)
    with pytest.raises(WeightsError, match="needs a weights folder"):
        build_autoencoder("taesd")
    with pytest.raises(WeightsError, match="unet_path"):
        build_segmenter(preset="sd15", autoencoder="unshuffle", mask_codec="unshuffle", visual_encoder="latent")
    with pytest.raises(ValueError, match="unknown preset"):
        build_segmenter(preset="huge")


def test_pretrained_round_trip_with_tiny_sd_and_dinov2(tmp_path):
    """The sd15 path on tiny models saved with save_pretrained: U-Net, VAE and DINOv2 load through
    from_pretrained, and conv_in / conv_in_ref are the pretrained kernel duplicated and halved."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8,
    )
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        norm_num_groups=4)
    unet.save_pretrained(tmp_path / "sd" / "unet")
    vae.save_pretrained(tmp_path / "sd" / "vae")
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=224, patch_size=14)).save_pretrained(tmp_path / "dinov2")

    model = build_segmenter(preset="sd15", unet_path=str(tmp_path / "sd"), autoencoder_path=str(tmp_path / "sd"),
                            visual_encoder_path=str(tmp_path / "dinov2"))
    pretrained = unet.conv_in.weight
    for conv in (model.net.conv_in, model.net.conv_in_ref):
        assert conv.weight.shape == (32, 8, 3, 3)
        torch.testing.assert_close(conv.weight[:, :4], pretrained / 2)
        torch.testing.assert_close(conv.weight[:, 4:], pretrained / 2)
    torch.testing.assert_close(model.net.unet.conv_out.weight, unet.conv_out.weight)
    assert model.net.visual_encoder.out_channels == 32
    support_image, support_mask, query_image = make_inputs(1, 1, 2, size=64)
    scores = model.predict_scores(support_image[:, 0][None].numpy(), support_mask[:, 0][None].numpy(),
                                  query_image[:, 0].numpy(), np.zeros(2, int))
    assert scores.shape == (2, 64, 64) and np.isfinite(scores).all()
    # a folder without the expected files: a clear error naming it
    with pytest.raises(WeightsError, match="from_pretrained"):
        build_segmenter(preset="sd15", unet_path=str(tmp_path / "dinov2"), autoencoder_path=str(tmp_path / "sd"),
                        visual_encoder_path=str(tmp_path / "dinov2"))


@pytest.mark.parametrize("kind,min_dice", [("taef2", 0.99), ("taesd", 0.98)])
def test_tiny_autoencoders_keep_a_real_chaos_mask(kind, min_dice):
    """TAEF2 and the CHAOS sample ship with the repository (runs on a fresh clone); TAESD is ../shared's."""
    import nibabel as nib

    bundle = Path(__file__).resolve().parents[1] / "bundle"
    if kind == "taef2":
        weights, label_file = bundle / "models" / "taef2", bundle / "sample" / "chaost2" / "label_15.nii.gz"
    else:
        weights = shared_path("weights", kind)
        label_file = shared_path("data", "CHAOST2", "chaos_MR_T2_normalized", "label_1.nii.gz")
    label = nib.load(label_file).get_fdata()
    z = int(np.argmax((label == 1).sum(axis=(0, 1))))
    mask = torch.tensor(label[..., z] == 1, dtype=torch.float32)[None, None]
    autoencoder = build_autoencoder(kind, weights)
    with torch.no_grad():
        decoded = autoencoder.decode(autoencoder.encode_mask(mask)) > 0
    dice = 2 * (decoded * mask).sum() / (decoded.sum() + mask.sum())
    assert dice >= min_dice, f"{kind} mask Dice {dice:.4f}"
