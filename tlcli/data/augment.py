"""Batch-wise augmentation on uint8 image tensors, the same code on CPU and GPU.

Images come square from the decode cache (side = input_size / crop_pct). Eval takes the
center crop: exactly timm's eval transform. Training takes a random resized crop per image
with `roi_align` (one call for the whole batch, on the batch's device), then flips, colour
jitter and, for `strong`, RandAugment, random erasing and mixup/cutmix, as in timm's recipes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.ops import roi_align


@dataclass(frozen=True)
class AugmentSpec:
    crop_scale: tuple[float, float] | None  # random resized crop area range; None: center crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.0
    color_jitter: float = 0.0  # brightness/contrast/saturation strength
    randaugment: bool = False
    erase_prob: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0


# light: small crops and flips, for data close to the pretraining domain.
# standard: torchvision's transfer-learning recipe with a milder minimum crop for few epochs.
# strong: timm's ImageNet recipe (RandAugment m9, erasing 0.25, mixup 0.8 / cutmix 1.0).
PRESETS = {
    "none": AugmentSpec(crop_scale=None),
    "light": AugmentSpec(crop_scale=(0.5, 1.0), hflip=0.5),
    "standard": AugmentSpec(crop_scale=(0.25, 1.0), hflip=0.5, color_jitter=0.2),
    "strong": AugmentSpec(
        crop_scale=(0.08, 1.0),
        hflip=0.5,
        color_jitter=0.4,
        randaugment=True,
        erase_prob=0.25,
        mixup_alpha=0.8,
        cutmix_alpha=1.0,
    ),
}
# torchvision's RandomResizedCrop tries this many boxes before falling back to the center.
RRC_ATTEMPTS = 10
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without waiting for the GPU.

    A copy from ordinary (pageable) memory blocks the CPU until the GPU has finished all the
    work queued before it, so the next batch could not be prepared while this one trains.
    From pinned memory the copy is queued like a kernel (PyTorch's pinned-memory cache keeps
    the buffer alive until the copy has run). A tensor already pinned (batches.prefetched) is
    not copied again."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class BatchAugmenter:
    """uint8 (B, S, S, 3) batches -> normalized float (B, 3, H, W) inputs (and targets)."""

    def __init__(
        self,
        spec: AugmentSpec,
        input_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        num_classes: int,
        label_smoothing: float = 0.0,
    ):
        self.spec = spec
        self.input_size = input_size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std).view(1, 3, 1, 1) * 255.0
        self.gray = torch.tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)
        self._on_device: dict[tuple[str, torch.device], torch.Tensor] = {}
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self._mixup = None
        if spec.mixup_alpha > 0 or spec.cutmix_alpha > 0:
            from timm.data import Mixup

            self._mixup = Mixup(
                mixup_alpha=spec.mixup_alpha,
                cutmix_alpha=spec.cutmix_alpha,
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )

    def _to_float(self, images: torch.Tensor) -> torch.Tensor:
        return images.permute(0, 3, 1, 2).float()

    def _constant(self, name: str, device: torch.device) -> torch.Tensor:
        """mean, std or gray on `device`, copied there once."""
        key = (name, device)
        if key not in self._on_device:
            self._on_device[key] = getattr(self, name).to(device)
        return self._on_device[key]

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self._constant("mean", x.device)) / self._constant("std", x.device)

    def center_crop(self, images: torch.Tensor) -> torch.Tensor:
        """The eval transform: center crop input_size from the cached square."""
        side = images.shape[1]
        top = (side - self.input_size) // 2
        crop = images[:, top : top + self.input_size, top : top + self.input_size]
        return self._normalize(self._to_float(crop))

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        spec = self.spec
        if spec.crop_scale is None:
            x = self._to_float(self._center_uint8(images))
        else:
            if spec.randaugment:
                images = self._randaugment(images)
            x = self._random_resized_crop(self._to_float(images), generator)
        batch = x.shape[0]
        if spec.hflip > 0:
            flip = to_device(torch.rand(batch, generator=generator) < spec.hflip, x.device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if spec.color_jitter > 0:
            x = self._color_jitter(x, generator)
        x = self._normalize(x)
        if spec.erase_prob > 0:
            x = self._erase(x, generator)
        if self._mixup is not None and batch % 2 == 0:
            x, labels = self._mixup(x, labels)
        return x, labels

    def _center_uint8(self, images: torch.Tensor) -> torch.Tensor:
        side = images.shape[1]
        top = (side - self.input_size) // 2
        return images[:, top : top + self.input_size, top : top + self.input_size]

    def _random_resized_crop(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, _, height, width = x.shape
        lo, hi = self.spec.crop_scale
        r_lo, r_hi = self.spec.crop_ratio
        area = (
            height * width * torch.empty(batch, RRC_ATTEMPTS).uniform_(lo, hi, generator=generator)
        )
        log_ratio = torch.empty(batch, RRC_ATTEMPTS).uniform_(
            math.log(r_lo), math.log(r_hi), generator=generator
        )
        ratio = torch.exp(log_ratio)
        w = torch.sqrt(area * ratio).round()
        h = torch.sqrt(area / ratio).round()
        ok = (w <= width) & (h <= height) & (w > 0) & (h > 0)
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((batch,), -1))
        rows = torch.arange(batch)
        w_sel = torch.where(first >= 0, w[rows, first.clamp(min=0)], torch.tensor(float(width)))
        h_sel = torch.where(first >= 0, h[rows, first.clamp(min=0)], torch.tensor(float(height)))
        u = torch.rand(batch, 2, generator=generator)
        x0 = torch.floor(u[:, 0] * (width - w_sel + 1))
        y0 = torch.floor(u[:, 1] * (height - h_sel + 1))
        boxes = to_device(torch.stack([rows.float(), x0, y0, x0 + w_sel, y0 + h_sel], 1), x.device)
        # aligned=True samples pixel centers; 2x2 samples per output bin smooth the downscale.
        return roi_align(x, boxes, (self.input_size, self.input_size), 1.0, 2, aligned=True)

    def _color_jitter(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        strength = self.spec.color_jitter
        factors = torch.empty(x.shape[0], 3).uniform_(
            1 - strength, 1 + strength, generator=generator
        )
        factors = to_device(factors, x.device).view(-1, 3, 1, 1, 1)
        weights = self._constant("gray", x.device)
        x = x * factors[:, 0]
        gray = (x * weights).sum(1, True)
        x = (x - gray.mean((2, 3), keepdim=True)) * factors[:, 1] + gray.mean((2, 3), keepdim=True)
        gray = (x * weights).sum(1, True)
        x = (x - gray) * factors[:, 2] + gray
        return x.clamp(0, 255)

    def _randaugment(self, images: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import v2

        rand_augment = v2.RandAugment(num_ops=2, magnitude=9)
        chw = images.permute(0, 3, 1, 2)
        return torch.stack([rand_augment(img) for img in chw]).permute(0, 2, 3, 1)

    def _erase(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random erasing (Zhong et al. 2017): one box per chosen image, filled with noise."""
        batch, _, height, width = x.shape
        chosen = torch.rand(batch, generator=generator) < self.spec.erase_prob
        for i in torch.nonzero(chosen).flatten().tolist():
            area = height * width * float(torch.empty(1).uniform_(0.02, 1 / 3, generator=generator))
            aspect = math.exp(
                float(torch.empty(1).uniform_(math.log(0.3), math.log(3.3), generator=generator))
            )
            h = min(height, int(round(math.sqrt(area * aspect))))
            w = min(width, int(round(math.sqrt(area / aspect))))
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            noise = to_device(torch.randn(3, h, w, generator=generator), x.device).to(x.dtype)
            x[i, :, top : top + h, left : left + w] = noise
        return x
