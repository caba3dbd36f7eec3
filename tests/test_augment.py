"""scripts.data.augment: one affine, applied alike to a latent and its full-resolution mask."""

import pytest
import torch
import torch.nn.functional as F

from scripts.data.augment import LatentMaskAffine


def _ellipse(cy=100, cx=150, ry=40, rx=25, size=256):
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    return ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) <= 1).float()[None]


def test_latent_and_mask_stay_aligned():
    mask = _ellipse()
    latent = torch.cat([F.avg_pool2d(mask[None], 8)[0], torch.rand(3, 32, 32)])  # channel 0 = pooled mask
    aug = LatentMaskAffine(rotate_deg=15, scale_range=(0.9, 1.1), translate_frac=0.08).set_random_state(0)
    for _ in range(4):
        new_latent, new_mask = aug(latent, mask)
        assert new_latent.shape == latent.shape and new_mask.shape == mask.shape
        assert set(new_mask.unique().tolist()) <= {0.0, 1.0}
        pooled = F.avg_pool2d(new_mask[None], 8)[0, 0]
        aligned = (new_latent[0] - pooled).abs().mean()
        unmoved = (latent[0] - pooled).abs().mean()  # what a latent left untransformed would score
        assert aligned < 0.01 and aligned < 0.35 * unmoved


def test_seeded_and_reusable_draws():
    mask, latent = _ellipse(), torch.rand(4, 32, 32)
    a = LatentMaskAffine().set_random_state(3)
    b = LatentMaskAffine().set_random_state(3)
    la, ma = a(latent, mask)
    lb, mb = b(latent, mask)
    assert torch.equal(la, lb) and torch.equal(ma, mb)
    lc, mc = a(latent, mask)
    assert not torch.equal(lc, la)
    ld, md = a(latent, mask, randomize=False)  # the same draw again, e.g. for a second shot
    assert torch.equal(ld, lc) and torch.equal(md, mc)
    none = LatentMaskAffine(prob=0.0).set_random_state(0)
    l0, m0 = none(latent, mask)
    assert torch.equal(l0, latent) and torch.equal(m0, mask)
    with pytest.raises(ValueError, match="mask"):
        a(latent, mask[0])


def test_a_restored_state_draws_what_the_uninterrupted_stream_draws():
    """Issue #39 item 10: ignite's checkpoint saves the augmentation's state, so a resumed training
    goes on with the same draws; the state survives torch.save / torch.load(weights_only=True)."""
    import io

    mask, latent = _ellipse(), torch.rand(4, 32, 32)
    running = LatentMaskAffine().set_random_state(5)
    running(latent, mask)
    buffer = io.BytesIO()
    torch.save(running.state_dict(), buffer)
    buffer.seek(0)
    resumed = LatentMaskAffine().set_random_state(99)  # a fresh process seeds its own stream
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for _ in range(3):
        expected, got = running(latent, mask), resumed(latent, mask)
        assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])


def test_batched_warp_keeps_latent_and_mask_aligned():
    masks = torch.cat([_ellipse()[None], _ellipse(cy=150, cx=90, ry=30, rx=45)[None]])
    latents = torch.cat([F.avg_pool2d(masks, 8), torch.rand(2, 2, 32, 32)], dim=1)
    aug = LatentMaskAffine(rotate_deg=15, scale_range=(0.9, 1.1), translate_frac=0.08).set_random_state(1)
    new_latents, new_masks = aug.apply_batch(latents, masks)
    assert new_latents.shape == latents.shape and new_masks.shape == masks.shape
    assert set(new_masks.unique().tolist()) <= {0.0, 1.0}
    pooled = F.avg_pool2d(new_masks, 8)[:, 0]
    aligned = (new_latents[:, 0] - pooled).abs().mean()
    unmoved = (latents[:, 0] - pooled).abs().mean()
    assert aligned < 0.01 and aligned < 0.35 * unmoved
    assert not torch.equal(new_masks[0], masks[0])  # it did move
