import pytest
import torch

from streamkd.augment import (
    OnProAugment,
    SimCLRAugment,
    _adjust_brightness,
    _adjust_contrast,
    _adjust_hue,
    _adjust_saturation,
    _uniform,
    color_jitter,
    crop_boxes,
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


def test_crop_boxes_follow_torchvision_sampling():
    import torchvision.transforms as tv

    g = torch.Generator().manual_seed(0)
    boxes = crop_boxes(4000, 32, 32, g, scale=(0.2, 1.0))
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 32).all() and (left + w <= 32).all() and (h >= 1).all() and (w >= 1).all()
    assert torch.equal(boxes, boxes.round())  # whole pixels, as torchvision crops
    torch.manual_seed(0)
    ref = torch.tensor(
        [
            tv.RandomResizedCrop.get_params(torch.zeros(3, 32, 32), [0.2, 1.0], [3 / 4, 4 / 3])
            for _ in range(4000)
        ],
        dtype=torch.float32,
    )
    ours_area = (h * w / 1024).mean()
    ref_area = (ref[:, 2] * ref[:, 3] / 1024).mean()
    assert abs(ours_area - ref_area) < 0.015  # same distribution (clipping would inflate it)
    assert abs((w / h).log().mean() - (ref[:, 3] / ref[:, 2]).log().mean()) < 0.03


def test_crop_boxes_fall_back_to_the_central_crop():
    # areas larger than the image never fit: torchvision then takes the whole (square) image
    boxes = crop_boxes(5, 32, 32, torch.Generator().manual_seed(0), scale=(2.0, 3.0))
    assert torch.equal(boxes, torch.tensor([[0.0, 0.0, 32.0, 32.0]] * 5))
    # a wide image with a ratio range that excludes it: central crop at the largest ratio
    boxes = crop_boxes(3, 10, 40, torch.Generator(), scale=(5.0, 5.0), ratio=(1.0, 2.0))
    assert torch.equal(boxes[0], torch.tensor([0.0, 10.0, 10.0, 20.0]))


def test_jitter_ops_match_torchvision_functional():
    import torchvision.transforms.functional as tvf

    x = torch.rand(4, 3, 6, 6)
    f = torch.tensor([0.7, 1.0, 1.3, 0.9]).view(4, 1, 1, 1)
    h = torch.tensor([-0.1, 0.0, 0.05, 0.1]).view(4, 1, 1, 1)
    for i in range(4):
        xi, fi, hi = x[i : i + 1], float(f[i]), float(h[i])
        assert torch.allclose(_adjust_brightness(xi, f[i : i + 1]), tvf.adjust_brightness(xi, fi))
        assert torch.allclose(
            _adjust_contrast(xi, f[i : i + 1]), tvf.adjust_contrast(xi, fi), atol=1e-5
        )
        assert torch.allclose(
            _adjust_saturation(xi, f[i : i + 1]), tvf.adjust_saturation(xi, fi), atol=1e-5
        )
        assert torch.allclose(_adjust_hue(xi, h[i : i + 1]), tvf.adjust_hue(xi, hi), atol=1e-4)


def test_color_jitter_order_is_drawn_per_sample():
    # brightness then contrast differs from contrast then brightness once clamping bites;
    # with one image repeated, both orders must show up among the outputs.
    x = torch.full((1, 3, 4, 4), 0.9)
    x[..., :2, :] = 0.1
    out = color_jitter(
        x.repeat(64, 1, 1, 1), torch.Generator().manual_seed(0), 0.4, 0.4, 0.0, 0.0, p=1.0
    )
    bright_first = torch.zeros(64, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    torch.rand(64, generator=g)  # the apply draw
    bf = _uniform(64, 0.6, 1.4, g).view(64, 1, 1, 1)
    cf = _uniform(64, 0.6, 1.4, g).view(64, 1, 1, 1)
    _uniform(64, 0.6, 1.4, g), _uniform(64, 0.0, 0.0, g)
    order = torch.rand(64, 4, generator=g).argsort(1)
    bright_first = (order == 0).float().argmax(1) < (order == 1).float().argmax(1)
    xs = x.repeat(64, 1, 1, 1)
    bc = _adjust_contrast(_adjust_brightness(xs, bf), cf)
    cb = _adjust_brightness(_adjust_contrast(xs, cf), bf)
    expected = torch.where(bright_first.view(64, 1, 1, 1), bc, cb)
    assert 0 < int(bright_first.sum()) < 64
    assert torch.allclose(out, expected, atol=1e-6)
