"""Batched data augmentation on uint8 image tensors, on whatever device the batch lives on.

The datasets store images as uint8 ``[B, H, W, C]``; the transforms here take such a batch (already on
the training device), augment the whole batch at once with tensor ops (no per-image PIL, no Python loop
over samples) and return normalised float32 ``[B, C, H, W]``.

Randomness: every transform takes a ``torch.Generator`` that lives on the CPU. The per-sample random
numbers are drawn on the CPU with it, in a fixed documented order, and only then moved to the batch's
device, so a run gives the same augmentations on CPU and CUDA and resumes exactly from a saved
generator state.

On a GPU a call never waits for it: the draws travel in one pinned, asynchronous copy
(``train/transfer.py``), and the normalisation constants are checked once, when the transform is made,
and uploaded once per device (a per-call check of ``std > 0`` on the device would read a value back).

Policies follow the reference (memo-reference.md, "Training one task"):

- CIFAR: RandomCrop(32, padding=4), RandomHorizontalFlip(), ColorJitter(brightness=63/255), Normalize.
- ImageNet: RandomResizedCrop(224) + RandomHorizontalFlip(), Normalize.
- Test: Normalize only (ImageNet test images are already Resize(256) + CenterCrop(224) when loaded).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from memo_edge.train.transfer import to_device

__all__ = [
    "to_float_nchw",
    "normalize",
    "TestTransform",
    "CifarAugment",
    "CifarParams",
    "ImageNetAugment",
    "ImageNetParams",
    "AUGMENTS",
    "build_augment",
]

Stats = Sequence[float] | Tensor

# torchvision's RandomResizedCrop tries this many boxes before falling back to the central crop.
_RESIZED_CROP_TRIES = 10


def _check_batch(images: Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"expected a uint8 batch [B, H, W, C], got dtype {images.dtype} with shape {tuple(images.shape)}"
        )


def _check_generator(generator: torch.Generator) -> None:
    # Draws must come from a CPU generator so they are identical whatever device trains.
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise ValueError("generator must be a torch.Generator on the CPU (device 'cpu')")


def to_float_nchw(images: Tensor) -> Tensor:
    """uint8 ``[B, H, W, C]`` -> float32 ``[B, C, H, W]`` in [0, 1] (what ToTensor does per image)."""
    _check_batch(images)
    return images.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)


def _stats(values: Stats, like: Tensor, name: str) -> Tensor:
    t = torch.as_tensor(values, dtype=like.dtype, device=like.device).flatten()
    if t.numel() != like.shape[1]:
        raise ValueError(f"{name} has {t.numel()} values but the batch has {like.shape[1]} channels")
    return t.view(1, -1, 1, 1)


def _check_float_batch(x: Tensor) -> None:
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"expected a float batch [B, C, H, W], got dtype {x.dtype} shape {tuple(x.shape)}")


def normalize(x: Tensor, mean: Stats, std: Stats) -> Tensor:
    """``(x - mean) / std`` per channel of a float ``[B, C, H, W]`` batch (mean/std for pixels in [0, 1])."""
    _check_float_batch(x)
    m, s = _stats(mean, x, "mean"), _stats(std, x, "std")
    if bool((s <= 0).any()):
        raise ValueError("std values must all be > 0")
    return (x - m) / s


def _as_floats(values: Stats, name: str) -> tuple[float, ...]:
    out = tuple(float(v) for v in torch.as_tensor(values).flatten().tolist())
    if not out:
        raise ValueError(f"{name} must not be empty")
    if name == "std" and any(v <= 0 for v in out):
        raise ValueError("std values must all be > 0")
    return out


class _Normalize:
    """``normalize`` with constants checked once (here, on the host) and kept per (device, dtype): the
    transforms call it every batch, and neither check nor upload may then touch the GPU."""

    def __init__(self, mean: Stats, std: Stats) -> None:
        self.mean = _as_floats(mean, "mean")
        self.std = _as_floats(std, "std")
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
        self._on: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    def __call__(self, x: Tensor) -> Tensor:
        _check_float_batch(x)
        if x.shape[1] != len(self.mean):
            raise ValueError(f"mean has {len(self.mean)} values but the batch has {x.shape[1]} channels")
        key = (x.device, x.dtype)
        if key not in self._on:
            self._on[key] = (_stats(self.mean, x, "mean"), _stats(self.std, x, "std"))
        m, s = self._on[key]
        return (x - m) / s


class TestTransform:
    """Normalise only: the reference's test transform (ToTensor + Normalize)."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, mean: Stats, std: Stats) -> None:
        self._normalize = _Normalize(mean, std)
        self.mean, self.std = self._normalize.mean, self._normalize.std

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        # ``generator`` is accepted and ignored so train and test transforms share one call signature.
        return self._normalize(to_float_nchw(images))


@dataclass(frozen=True)
class CifarParams:
    """Per-sample draws of :class:`CifarAugment` (CPU tensors of length B)."""

    top: Tensor  # int64, row offset into the zero-padded image, in [0, H + 2p - size]
    left: Tensor  # int64, column offset, in [0, W + 2p - size]
    flip: Tensor  # bool, horizontal flip
    factor: Tensor  # float32, brightness factor in [max(0, 1 - b), 1 + b]


class CifarAugment:
    """RandomCrop(size, padding) + RandomHorizontalFlip(0.5) + ColorJitter(brightness) + Normalize.

    ``size`` defaults to the input's own height/width (RandomCrop(32, padding=4) on 32x32 CIFAR).
    Draw order per call (the generator stream): top [B], left [B], flip [B], brightness factor [B].
    All four are drawn even when padding or brightness is 0, so the stream layout never changes.
    """

    def __init__(
        self,
        mean: Stats,
        std: Stats,
        *,
        padding: int = 4,
        brightness: float = 63 / 255,
        size: int | None = None,
    ) -> None:
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        if brightness < 0:
            raise ValueError(f"brightness must be >= 0, got {brightness}")
        if size is not None and size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self._normalize = _Normalize(mean, std)
        self.mean, self.std = self._normalize.mean, self._normalize.std
        self.padding = int(padding)
        self.brightness = float(brightness)
        self.size = size

    def _crop_size(self, height: int, width: int) -> tuple[int, int]:
        h = self.size if self.size is not None else height
        w = self.size if self.size is not None else width
        if h > height + 2 * self.padding or w > width + 2 * self.padding:
            raise ValueError(
                f"crop {h}x{w} is larger than the padded image {height + 2 * self.padding}x"
                f"{width + 2 * self.padding}"
            )
        return h, w

    def sample_params(self, batch: int, height: int, width: int, generator: torch.Generator) -> CifarParams:
        """Draw the per-sample crop offsets, flips and brightness factors on the CPU."""
        _check_generator(generator)
        ch, cw = self._crop_size(height, width)
        top = torch.randint(0, height + 2 * self.padding - ch + 1, (batch,), generator=generator)
        left = torch.randint(0, width + 2 * self.padding - cw + 1, (batch,), generator=generator)
        # RandomHorizontalFlip: flip when rand < p (p = 0.5).
        flip = torch.rand(batch, generator=generator) < 0.5
        # ColorJitter(brightness=b) draws factor ~ U[max(0, 1 - b), 1 + b] per image.
        lo, hi = max(0.0, 1.0 - self.brightness), 1.0 + self.brightness
        factor = torch.empty(batch).uniform_(lo, hi, generator=generator)
        return CifarParams(top=top, left=left, flip=flip, factor=factor)

    def apply(self, images: Tensor, params: CifarParams) -> Tensor:
        """Augment ``images`` with given draws; returns normalised float32 ``[B, C, size, size]``."""
        _check_batch(images)
        b, h, w, c = images.shape
        ch, cw = self._crop_size(h, w)
        p = self.padding
        dev = images.device
        # Pad once (zeros, as RandomCrop's default fill), then gather every sample's window at once.
        padded = images.new_zeros((b, h + 2 * p, w + 2 * p, c))
        padded[:, p : p + h, p : p + w] = images
        top, left, flip, factor = _draws_on(params, dev)
        rows = top[:, None] + torch.arange(ch, device=dev)  # [B, ch]
        cols_fwd = torch.arange(cw, device=dev)
        cols = left[:, None] + torch.where(flip[:, None], cw - 1 - cols_fwd, cols_fwd)  # [B, cw]
        batch_idx = torch.arange(b, device=dev)[:, None, None]
        crops = padded[batch_idx, rows[:, :, None], cols[:, None, :]]  # [B, ch, cw, C], uint8
        x = to_float_nchw(crops)
        # Brightness: blend with black = x * factor, clamped to the valid range (torchvision's
        # adjust_brightness). Done in float, so unlike PIL the result is not re-quantised to uint8.
        x = (x * factor.to(x.dtype).view(b, 1, 1, 1)).clamp_(0.0, 1.0)
        return self._normalize(x)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        _check_batch(images)
        b, h, w, _ = images.shape
        return self.apply(images, self.sample_params(b, h, w, generator))


def _draws_on(params: CifarParams, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(top, left, flip, factor) on ``device``: on a GPU the four draws travel as one block in one
    asynchronous copy, not as four blocking ones."""
    if device.type == "cpu":
        return params.top, params.left, params.flip, params.factor
    return unpack_draws(to_device(pack_draws(params), device))


def pack_draws(params: CifarParams) -> Tensor:
    """The four draws as one float32 ``[4, B]`` block: offsets (below an image's side plus its padding)
    and flips are integers that float32 holds exactly, and the factor is float32 already."""
    return torch.stack([params.top.float(), params.left.float(), params.flip.float(), params.factor.float()])


def unpack_draws(block: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(top int64, left int64, flip bool, factor float32) from ``pack_draws``'s block, on its device."""
    top, left, flip, factor = block.unbind(0)
    return top.long(), left.long(), flip.bool(), factor


@dataclass(frozen=True)
class ImageNetParams:
    """Per-sample crop boxes and flips of :class:`ImageNetAugment` (CPU tensors of length B)."""

    top: Tensor  # int64
    left: Tensor  # int64
    height: Tensor  # int64, box height in pixels
    width: Tensor  # int64, box width in pixels
    flip: Tensor  # bool


class ImageNetAugment:
    """RandomResizedCrop(size, scale, ratio) + RandomHorizontalFlip(0.5) + Normalize, batched.

    Boxes are sampled as torchvision's ``RandomResizedCrop.get_params`` does, vectorised: for each
    sample up to 10 tries of (area fraction ~ U[scale], aspect ratio log-uniform in ratio); the first
    box that fits is used, and a sample with none falls back to the central crop clamped to ``ratio``.
    The boxes are resampled with ``affine_grid`` + ``grid_sample`` (bilinear, align_corners=False,
    border padding: the same sampling points and edge clamping as ``F.interpolate(..., "bilinear")``;
    no antialiasing when a box is shrunk).

    Draw order per call: area fractions [B, 10], log aspect ratios [B, 10], top uniforms [B],
    left uniforms [B], flip [B].
    """

    def __init__(
        self,
        mean: Stats,
        std: Stats,
        *,
        size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if not (0 < scale[0] <= scale[1]):
            raise ValueError(f"scale must satisfy 0 < min <= max, got {scale}")
        if not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        self._normalize = _Normalize(mean, std)
        self.mean, self.std = self._normalize.mean, self._normalize.std
        self.size = int(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))

    def _central_box(self, height: int, width: int) -> tuple[int, int]:
        # torchvision's fallback: the whole image, cropped to the nearest allowed aspect ratio.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w = width
            h = int(round(w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h = height
            w = int(round(h * self.ratio[1]))
        else:
            h, w = height, width
        return h, w

    def sample_params(
        self, batch: int, height: int, width: int, generator: torch.Generator
    ) -> ImageNetParams:
        """Draw the per-sample boxes and flips on the CPU (float64 arithmetic, like torchvision's floats)."""
        _check_generator(generator)
        tries = (batch, _RESIZED_CROP_TRIES)
        area = float(height * width)
        frac = torch.empty(tries, dtype=torch.float64).uniform_(*self.scale, generator=generator)
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        log_r = torch.empty(tries, dtype=torch.float64).uniform_(log_lo, log_hi, generator=generator)
        u_top = torch.rand(batch, dtype=torch.float64, generator=generator)
        u_left = torch.rand(batch, dtype=torch.float64, generator=generator)
        flip = torch.rand(batch, generator=generator) < 0.5

        target, aspect = area * frac, torch.exp(log_r)
        # torch.round rounds half to even, as Python's round() in torchvision does.
        w = torch.round(torch.sqrt(target * aspect)).long()
        h = torch.round(torch.sqrt(target / aspect)).long()
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = ok.long().argmax(dim=1)  # index of the first fitting try (0 when none fits)
        found = ok.any(dim=1)
        pick = torch.arange(batch)
        bh, bw = h[pick, first], w[pick, first]
        ch, cw = self._central_box(height, width)
        bh = torch.where(found, bh, torch.full_like(bh, ch))
        bw = torch.where(found, bw, torch.full_like(bw, cw))
        # randint(0, n - h + 1) per sample with a per-sample bound: floor(u * count), u in [0, 1).
        top_rand = torch.floor(u_top * (height - bh + 1).double()).long().clamp_max(height - bh)
        left_rand = torch.floor(u_left * (width - bw + 1).double()).long().clamp_max(width - bw)
        top = torch.where(found, top_rand, (height - bh) // 2)
        left = torch.where(found, left_rand, (width - bw) // 2)
        return ImageNetParams(top=top, left=left, height=bh, width=bw, flip=flip)

    def _theta(self, params: ImageNetParams, height: int, width: int) -> Tensor:
        """Affine maps from output to input normalised coordinates, one per sample: ``[B, 2, 3]``.

        With align_corners=False, [-1, 1] spans pixel edges, so the box [left, left + w] in pixels
        is [-1 + 2 left / W, -1 + 2 (left + w) / W]: scale w / W, centre (2 left + w) / W - 1.
        A flip negates the x scale.
        """
        p = params
        sx = p.width.double() / width
        sy = p.height.double() / height
        tx = (2 * p.left + p.width).double() / width - 1
        ty = (2 * p.top + p.height).double() / height - 1
        sx = torch.where(p.flip, -sx, sx)
        zero = torch.zeros_like(sx)
        theta = torch.stack([torch.stack([sx, zero, tx], 1), torch.stack([zero, sy, ty], 1)], 1)
        return theta.to(torch.float32)

    def apply(self, images: Tensor, params: ImageNetParams) -> Tensor:
        """Crop, resize, flip and normalise with given draws -> float32 ``[B, C, size, size]``."""
        _check_batch(images)
        b, h, w, c = images.shape
        x = to_float_nchw(images)
        theta = to_device(self._theta(params, h, w), x.device)
        grid = F.affine_grid(theta, [b, c, self.size, self.size], align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return self._normalize(out)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        _check_batch(images)
        b, h, w, _ = images.shape
        return self.apply(images, self.sample_params(b, h, w, generator))


AUGMENTS: dict[str, type[CifarAugment] | type[ImageNetAugment]] = {
    "cifar": CifarAugment,
    "imagenet": ImageNetAugment,
}


def build_augment(
    policy: str, mean: Stats, std: Stats, image_size: int
) -> Callable[[Tensor, torch.Generator], Tensor]:
    """The training augmentation for ``policy`` producing ``image_size`` x ``image_size`` images."""
    if policy == "cifar":
        # RandomCrop(image_size, padding=4) + flip + ColorJitter(63/255), the reference's CIFAR policy.
        return CifarAugment(mean, std, size=image_size)
    if policy == "imagenet":
        return ImageNetAugment(mean, std, size=image_size)
    raise ValueError(f"unknown augmentation policy {policy!r}; choose from {', '.join(AUGMENTS)}")
