import pytest
import torch

from streamkd.augment import (
    OnProAugment,
    SimCLRAugment,
    color_jitter,
    hsv_to_rgb,
    resized_crop_flip,
    rgb_to_hsv,
    rotation_views,
)


def _images(n=6, c=3, s=16):
    return torch.randint(0, 256, (n, c, s, s), generator=torch.Generator().manual_seed(1)).to(
        torch.uint8
    )


def test_simclr_augment_is_seeded_per_sample_and_in_range():
    x = _images()
    a = SimCLRAugment()
    out1 = a(x, torch.Generator().manual_seed(0))
    out2 = a(x, torch.Generator().manual_seed(0))
    out3 = a(x, torch.Generator().manual_seed(1))
    assert out1.shape == x.shape and out1.dtype == torch.float32
    assert torch.equal(out1, out2) and not torch.equal(out1, out3)
    assert out1.min() >= 0 and out1.max() <= 1
    # parameters differ per sample: the same image twice gets two different views
    same = x[:1].repeat(2, 1, 1, 1)
    v = a(same, torch.Generator().manual_seed(3))
    assert not torch.allclose(v[0], v[1])


def test_full_crop_with_forced_flip_is_a_mirror_image():
    x = torch.rand(2, 3, 8, 8)
    out = resized_crop_flip(x, torch.Generator(), scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0)
    assert torch.allclose(out, torch.flip(x, dims=[3]), atol=1e-5)
    same = resized_crop_flip(x, torch.Generator(), scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    assert torch.allclose(same, x, atol=1e-5)


def test_small_crops_zoom_in():
    x = torch.zeros(1, 1, 32, 32)
    x[..., 12:20, 12:20] = 1.0  # a centred square
    g = torch.Generator().manual_seed(0)
    out = resized_crop_flip(x.repeat(64, 1, 1, 1), g, scale=(0.2, 0.2), flip_p=0.0)
    assert out.mean() > x.mean() * 1.5  # crops of 20% area enlarge what they keep


def test_color_jitter_and_hsv():
    x = torch.rand(5, 3, 4, 4)
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(color_jitter(x, g, p=0.0), x)
    out = color_jitter(x, torch.Generator().manual_seed(0), p=1.0)
    assert not torch.allclose(out, x) and out.min() >= 0 and out.max() <= 1


def test_onpro_view_and_rotations():
    x = _images(2, 3, 8)
    assert OnProAugment()(x, torch.Generator()).shape == (2, 3, 8, 8)
    r16 = rotation_views(x, 16)
    assert r16.shape == (32, 3, 8, 8)
    assert torch.equal(r16[:2], x)  # copy 0 is the batch itself
    assert torch.equal(r16[4 * 2 : 5 * 2], torch.rot90(x, 2, (2, 3)))  # copy 4: rotated 180
    copies = r16.view(16, 2, -1)
    assert len({tuple(c[0].tolist()) for c in copies}) == 16  # all 16 copies differ
    assert rotation_views(x, 4).shape == (8, 3, 8, 8)
    assert torch.equal(rotation_views(x, 1), x)
    with pytest.raises(ValueError, match="1, 4 or 16"):
        rotation_views(x, 8)
