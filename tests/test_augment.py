from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memo_edge.train.augment import (
    AUGMENTS,
    CifarAugment,
    CifarParams,
    ImageNetAugment,
    ImageNetParams,
    TestTransform,
    build_augment,
    normalize,
    to_float_nchw,
)

CIFAR_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR_STD = (0.2675, 0.2565, 0.2761)
ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # identity normalisation: output = pixels in [0, 1]

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def images(b: int = 8, h: int = 8, w: int = 8, *, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, h, w, 3), generator=g, dtype=torch.uint8).to(device)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- basics


def test_to_float_nchw_layout_and_range() -> None:
    x = images(2, 4, 5)
    y = to_float_nchw(x)
    assert y.shape == (2, 3, 4, 5) and y.dtype == torch.float32
    assert torch.equal(y[1, 2, 3, 4], x[1, 3, 4, 2].float() / 255)
    with pytest.raises(ValueError, match="uint8"):
        to_float_nchw(x.float())


def test_normalize_rejects_channel_mismatch() -> None:
    with pytest.raises(ValueError, match="channels"):
        normalize(torch.zeros(1, 3, 2, 2), (0.5, 0.5), (0.2, 0.2))


@pytest.mark.parametrize("device", DEVICES)
def test_test_transform_exact_known_pixel(device: str) -> None:
    x = torch.zeros(2, 4, 4, 3, dtype=torch.uint8, device=device)
    x[1, 2, 3] = torch.tensor([51, 102, 255], dtype=torch.uint8)  # 0.2, 0.4, 1.0
    out = TestTransform((0.5, 0.4, 0.25), (0.25, 0.5, 0.5))(x)
    assert out.shape == (2, 3, 4, 4) and out.dtype == torch.float32 and out.device.type == device
    # (0.2 - 0.5) / 0.25 = -1.2; (0.4 - 0.4) / 0.5 = 0; (1.0 - 0.25) / 0.5 = 1.5
    expected = torch.tensor([-1.2, 0.0, 1.5], device=device)
    torch.testing.assert_close(out[1, :, 2, 3], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([-2.0, -0.8, -0.5], device=device), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("device", DEVICES)
def test_cifar_shape_dtype_device(device: str) -> None:
    out = CifarAugment(CIFAR_MEAN, CIFAR_STD)(images(5, 32, 32, device=device), gen(0))
    assert out.shape == (5, 3, 32, 32) and out.dtype == torch.float32 and out.device.type == device


def test_cifar_draws_follow_documented_order() -> None:
    aug = CifarAugment(ZERO, ONE, padding=4, brightness=0.25)
    p = aug.sample_params(16, 32, 32, gen(7))
    g = gen(7)  # re-seed and recompute: top, left, flip, brightness factor
    torch.testing.assert_close(p.top, torch.randint(0, 9, (16,), generator=g))
    torch.testing.assert_close(p.left, torch.randint(0, 9, (16,), generator=g))
    torch.testing.assert_close(p.flip, torch.rand(16, generator=g) < 0.5)
    torch.testing.assert_close(p.factor, torch.empty(16).uniform_(0.75, 1.25, generator=g))


def test_cifar_crop_equals_slice_of_zero_padded_image() -> None:
    pad = 4
    x = images(32, 8, 8, seed=1)
    aug = CifarAugment(ZERO, ONE, padding=pad, brightness=0.0)
    out = aug(x, gen(3))
    params = aug.sample_params(32, 8, 8, gen(3))  # the same draws, by re-seeding
    assert params.top.unique().numel() > 3 and params.flip.any() and not params.flip.all()
    padded = F.pad(to_float_nchw(x), (pad, pad, pad, pad))  # zero padding
    for i in range(32):
        t, l = int(params.top[i]), int(params.left[i])
        manual = padded[i, :, t : t + 8, l : l + 8]
        if params.flip[i]:
            manual = manual.flip(-1)
        assert torch.equal(out[i], manual), f"sample {i}"
    # The corner offsets show the zero border.
    corner = CifarParams(
        top=torch.tensor([0]), left=torch.tensor([0]), flip=torch.tensor([False]), factor=torch.tensor([1.0])
    )
    out0 = aug.apply(x[:1], corner)
    assert torch.equal(out0[0, :, :pad, :], torch.zeros(3, pad, 8))
    assert torch.equal(out0[0, :, pad:, pad:], to_float_nchw(x[:1])[0, :, : 8 - pad, : 8 - pad])


def test_cifar_flip_exactly_mirrors() -> None:
    x = images(16, 6, 7, seed=2)
    aug = CifarAugment(ZERO, ONE, padding=0, brightness=0.0)
    out = aug(x, gen(11))
    flip = aug.sample_params(16, 6, 7, gen(11)).flip
    ref = to_float_nchw(x)
    assert flip.any() and not flip.all()
    assert torch.equal(out[flip], ref[flip].flip(-1))
    assert torch.equal(out[~flip], ref[~flip])


def test_cifar_same_seed_same_output_different_seed_different() -> None:
    x = images(16, 32, 32, seed=4)
    aug = CifarAugment(CIFAR_MEAN, CIFAR_STD)
    assert torch.equal(aug(x, gen(5)), aug(x, gen(5)))
    assert not torch.equal(aug(x, gen(5)), aug(x, gen(6)))
    g = gen(5)  # a generator advances: two batches in a row differ
    assert not torch.equal(aug(x, g), aug(x, g))


def test_cifar_brightness_factor_in_range() -> None:
    b = 63 / 255
    g = torch.Generator().manual_seed(0)
    # Mid-range pixels so that no value clamps: 150 / 255 * (1 + b) < 1.
    x = torch.randint(100, 151, (256, 8, 8, 3), generator=g, dtype=torch.uint8)
    aug = CifarAugment(ZERO, ONE, padding=0, brightness=b)
    out = aug(x, gen(9))
    # Padding 0 means the crop is the whole image (maybe flipped), so pixel sums are preserved:
    # out / in per image is the brightness factor.
    ratio = out.sum(dim=(1, 2, 3)) / to_float_nchw(x).sum(dim=(1, 2, 3))
    assert ratio.min() >= 1 - b - 1e-5 and ratio.max() <= 1 + b + 1e-5
    assert ratio.min() < 0.85 and ratio.max() > 1.15  # actually spread over the range
    torch.testing.assert_close(ratio, aug.sample_params(256, 8, 8, gen(9)).factor)
    # Bright pixels clamp at 1.
    white = torch.full((64, 4, 4, 3), 255, dtype=torch.uint8)
    assert aug(white, gen(1)).max() == 1.0


def test_cifar_rejects_bad_inputs() -> None:
    aug = CifarAugment(CIFAR_MEAN, CIFAR_STD)
    with pytest.raises(ValueError, match="uint8"):
        aug(images().float(), gen(0))
    with pytest.raises(ValueError, match="Generator"):
        aug(images(), 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="larger than the padded"):
        CifarAugment(ZERO, ONE, size=40)(images(2, 8, 8), gen(0))


# ---------------------------------------------------------------- ImageNet


@pytest.mark.parametrize("device", DEVICES)
def test_imagenet_shape_dtype_device(device: str) -> None:
    out = ImageNetAugment(CIFAR_MEAN, CIFAR_STD, size=24)(images(6, 40, 30, device=device), gen(0))
    assert out.shape == (6, 3, 24, 24) and out.dtype == torch.float32 and out.device.type == device


def test_imagenet_boxes_inside_image_and_reproducible() -> None:
    aug = ImageNetAugment(ZERO, ONE, size=16)
    p = aug.sample_params(200, 30, 40, gen(2))
    assert bool(((p.height >= 1) & (p.top >= 0) & (p.top + p.height <= 30)).all())
    assert bool(((p.width >= 1) & (p.left >= 0) & (p.left + p.width <= 40)).all())
    frac = (p.height * p.width).double() / (30 * 40)
    assert frac.min() < 0.2 and frac.max() > 0.7  # scale (0.08, 1) is explored
    q = aug.sample_params(200, 30, 40, gen(2))
    assert all(torch.equal(a, b) for a, b in zip(vars(p).values(), vars(q).values()))
    x = images(4, 30, 40)
    assert torch.equal(aug(x, gen(3)), aug(x, gen(3)))
    assert not torch.equal(aug(x, gen(3)), aug(x, gen(4)))


def test_imagenet_fallback_is_central_crop() -> None:
    # An area fraction above 1 never fits: torchvision falls back to the central crop clamped to ratio.
    aug = ImageNetAugment(ZERO, ONE, size=8, scale=(2.0, 3.0))
    p = aug.sample_params(3, 10, 20, gen(0))
    # in_ratio = 20 / 10 = 2 > 4/3: h = 10, w = round(10 * 4/3) = 13, top 0, left (20 - 13) // 2 = 3
    assert p.height.tolist() == [10] * 3 and p.width.tolist() == [13] * 3
    assert p.top.tolist() == [0] * 3 and p.left.tolist() == [3] * 3


@pytest.mark.parametrize("src,size", [(16, 24), (16, 8), (16, 16), (12, 21)])
def test_imagenet_full_box_is_a_resize(src: int, size: int) -> None:
    x = images(16, src, src, seed=5)
    aug = ImageNetAugment(ZERO, ONE, size=size, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    out = aug(x, gen(1))
    resized = F.interpolate(to_float_nchw(x), size=(size, size), mode="bilinear", align_corners=False)
    flip = aug.sample_params(16, src, src, gen(1)).flip
    assert flip.any() and not flip.all()
    torch.testing.assert_close(out[~flip], resized[~flip], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[flip], resized[flip].flip(-1), rtol=0, atol=1e-5)


def test_imagenet_box_of_output_size_is_a_slice() -> None:
    x = images(2, 16, 16, seed=6)
    aug = ImageNetAugment(ZERO, ONE, size=8)
    params = ImageNetParams(
        top=torch.tensor([2, 5]),
        left=torch.tensor([3, 0]),
        height=torch.tensor([8, 8]),
        width=torch.tensor([8, 8]),
        flip=torch.tensor([False, True]),
    )
    out = aug.apply(x, params)
    ref = to_float_nchw(x)
    torch.testing.assert_close(out[0], ref[0, :, 2:10, 3:11], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1], ref[1, :, 5:13, 0:8].flip(-1), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- factory


def test_build_augment() -> None:
    cifar = build_augment("cifar", CIFAR_MEAN, CIFAR_STD, 32)
    assert isinstance(cifar, CifarAugment)
    assert cifar(images(2, 32, 32), gen(0)).shape == (2, 3, 32, 32)
    imnet = build_augment("imagenet", CIFAR_MEAN, CIFAR_STD, 20)
    assert isinstance(imnet, ImageNetAugment)
    assert imnet(images(2, 28, 28), gen(0)).shape == (2, 3, 20, 20)
    with pytest.raises(ValueError, match="cifar, imagenet"):
        build_augment("autoaugment", CIFAR_MEAN, CIFAR_STD, 32)
    assert set(AUGMENTS) == {"cifar", "imagenet"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("policy,size", [("cifar", 32), ("imagenet", 24)])
def test_same_draws_on_cpu_and_cuda(policy: str, size: int) -> None:
    x = images(8, 32, 32, seed=8)
    aug = build_augment(policy, CIFAR_MEAN, CIFAR_STD, size)
    torch.testing.assert_close(aug(x.cuda(), gen(4)).cpu(), aug(x, gen(4)), rtol=0, atol=1e-5)
