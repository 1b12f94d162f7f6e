"""Segmentation augmentations that move an image and its label map together: Domain CutMix and
joint AutoAugment (UDAS trains with both; its multi-view pseudo-labels live in its own plugin).

Images are float tensors in [-1, 1], (N, 3, H, W); labels are int64 (N, H, W) with 255 = ignore.

- Domain CutMix (Yun et al. 2019, CutMix; applied across domains as in DACS/UDAS): a box of a
  labelled target image, with its labels, is pasted into a (translated) source image.
- AutoAugment (Cubuk et al. 2019), torchvision's ImageNet policy, applied to an image and its mask
  together: torchvision's own ``v2.AutoAugment`` refuses a ``tv_tensors.Mask`` and passes a plain
  label tensor through untouched, so the policy is applied here, geometric ops to both.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from dabench.tasks import IGNORE_INDEX

# Domain CutMix ---------------------------------------------------------------------------------


def sample_lambda(alpha: float, generator: torch.Generator | None = None) -> float:
    """CutMix's mixing ratio lam ~ Beta(alpha, alpha): the share of pixels kept from the image
    pasted into. torch's Beta takes no generator, so a seed drawn from ``generator`` (or torch's
    global RNG) drives numpy's Beta: the draw is reproducible under either."""
    if alpha <= 0:
        raise ValueError(f"CutMix alpha must be > 0, got {alpha}; alpha = 1 draws lam uniformly in [0, 1].")
    seed = int(torch.randint(2**62, (), generator=generator, device=_device(generator)))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def cutmix_box(
    height: int, width: int, lam: float, generator: torch.Generator | None = None
) -> tuple[int, int, int, int]:
    """(top, left, box_h, box_w) of a box covering (1 - lam) of a height x width image: sides
    sqrt(1 - lam) times the image's (rounded), placed uniformly so it lies inside the image."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"CutMix lam is the share of pixels kept and must lie in [0, 1], got {lam}.")
    side = math.sqrt(1.0 - lam)
    box_h, box_w = round(height * side), round(width * side)
    top = int(torch.randint(height - box_h + 1, (), generator=generator, device=_device(generator)))
    left = int(torch.randint(width - box_w + 1, (), generator=generator, device=_device(generator)))
    return top, left, box_h, box_w


def domain_cutmix(
    src_x: torch.Tensor,
    src_y: torch.Tensor,
    tgt_x: torch.Tensor,
    tgt_y: torch.Tensor,
    lam: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a box of each target image and its labels into the source image of the same index
    (one box per pair, a (1 - lam) share of the pixels, same position in both). Target batches of
    another size are resized to the source's (images bilinear, labels nearest); a shorter target
    batch is cycled through. Returns new tensors; the inputs are left as they were."""
    n, _, height, width = src_x.shape
    if src_y.shape != (n, height, width) or tgt_y.shape[0] != tgt_x.shape[0] or tgt_x.shape[0] == 0:
        raise ValueError(
            f"domain_cutmix needs images (N, C, H, W) with labels (N, H, W) on both sides and at least one "
            f"target image; got source {tuple(src_x.shape)} / {tuple(src_y.shape)}, "
            f"target {tuple(tgt_x.shape)} / {tuple(tgt_y.shape)}."
        )
    if tgt_x.shape[-2:] != src_x.shape[-2:]:
        tgt_x = F.interpolate(tgt_x, size=(height, width), mode="bilinear", align_corners=False)
        tgt_y = F.interpolate(tgt_y[:, None].float(), size=(height, width), mode="nearest")[:, 0].to(src_y.dtype)
    pair = torch.arange(n, device=tgt_x.device) % tgt_x.shape[0]
    tgt_x, tgt_y = tgt_x[pair], tgt_y[pair]

    boxes = torch.tensor([cutmix_box(height, width, lam, generator) for _ in range(n)], device=src_x.device)
    top, left, box_h, box_w = (boxes[:, i, None] for i in range(4))
    rows = torch.arange(height, device=src_x.device)
    cols = torch.arange(width, device=src_x.device)
    in_rows = (rows >= top) & (rows < top + box_h)  # (N, H)
    in_cols = (cols >= left) & (cols < left + box_w)  # (N, W)
    inside = in_rows[:, :, None] & in_cols[:, None, :]
    return torch.where(inside[:, None], tgt_x, src_x), torch.where(inside, tgt_y, src_y)


# AutoAugment on an image and its mask ---------------------------------------------------------------

GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
PHOTOMETRIC_OPS = (
    "Brightness", "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert",
)

# The largest magnitude (bin 9) of the ops whose magnitude takes a random sign, as in torchvision.
# Translations are a share of the image's width (X) or height (Y).
_SIGNED_MAX = {
    "ShearX": 0.3, "ShearY": 0.3, "TranslateX": 150.0 / 331.0, "TranslateY": 150.0 / 331.0, "Rotate": 30.0,
    "Brightness": 0.9, "Color": 0.9, "Contrast": 0.9, "Sharpness": 0.9,
}
_BINS = 10

# The ImageNet policy of AutoAugment: 25 sub-policies of two (op, probability, magnitude bin).
IMAGENET_POLICY = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
    (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)


def magnitude(op: str, bin: int | None, height: int, width: int) -> float:
    """The unsigned magnitude of ``op`` at ``bin`` (0..9) for a height x width image, on
    torchvision's scales: Posterize 8..4 bits, Solarize threshold 1..0 (images in [0, 1]),
    translations in pixels, the ops without a magnitude 0."""
    if op == "Posterize":
        return float(round(8 - 4 * bin / (_BINS - 1)))
    if op == "Solarize":
        return 1.0 - bin / (_BINS - 1)
    if op not in _SIGNED_MAX:
        return 0.0
    size = {"TranslateX": width, "TranslateY": height}.get(op, 1)
    return _SIGNED_MAX[op] * size * bin / (_BINS - 1)


def draw_policy(height: int, width: int, generator: torch.Generator | None = None) -> list[tuple[str, float]]:
    """One draw of AutoAugment's ImageNet policy for a height x width image: a sub-policy, then each
    of its ops kept with its probability, as (op, signed magnitude) pairs in order."""
    drawn = []
    for op, probability, bin in IMAGENET_POLICY[_randint(len(IMAGENET_POLICY), generator)]:
        if _uniform(1, generator).item() >= probability:
            continue
        m = magnitude(op, bin, height, width)
        if op in _SIGNED_MAX and _uniform(1, generator).item() < 0.5:
            m = -m
        drawn.append((op, m))
    return drawn


def auto_augment(
    x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """AutoAugment's ImageNet policy on images (N, 3, H, W) and their labels (N, H, W): one
    sub-policy drawn per image; geometric ops move image and labels together (labels nearest,
    255 where nothing maps), photometric ops change the image only. Returns new tensors."""
    height, width = x.shape[-2:]
    images, labels = [], []
    for xi, yi in zip(x.split(1), y.split(1)):
        for op, m in draw_policy(height, width, generator):
            xi, yi = apply_op(xi, yi, op, m)
        images.append(xi)
        labels.append(yi)
    return torch.cat(images), torch.cat(labels)


def apply_op(x: torch.Tensor, y: torch.Tensor, op: str, magnitude: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One AutoAugment op with a signed ``magnitude`` on a batch (every image the same), images in
    [-1, 1] and labels (N, H, W). The image fill is 0 (mid grey), the label fill 255, and both
    are resampled with nearest interpolation (torchvision's AutoAugment default), so they stay aligned."""
    if op in GEOMETRIC_OPS:
        x = _geometric(x, op, magnitude, fill=0.0)
        y = _geometric(tv_tensors.Mask(y), op, magnitude, fill=IGNORE_INDEX).as_subclass(torch.Tensor)
        return x, y
    return photometric(x, op, magnitude), y.clone()


def photometric(x: torch.Tensor, op: str, magnitude: float) -> torch.Tensor:
    """One photometric AutoAugment op on images in [-1, 1], by torchvision's functional ops."""
    if op not in PHOTOMETRIC_OPS:
        raise ValueError(f"Unknown AutoAugment op {op!r}; expected one of {GEOMETRIC_OPS + PHOTOMETRIC_OPS}.")
    image = (x + 1) / 2  # torchvision's float ops expect [0, 1]
    if op == "Brightness":
        image = TF.adjust_brightness(image, 1.0 + magnitude)
    elif op == "Color":
        image = TF.adjust_saturation(image, 1.0 + magnitude)
    elif op == "Contrast":
        image = TF.adjust_contrast(image, 1.0 + magnitude)
    elif op == "Sharpness":
        image = TF.adjust_sharpness(image, 1.0 + magnitude)
    elif op == "Posterize":
        image = TF.posterize(image, bits=int(magnitude))
    elif op == "Solarize":
        image = TF.solarize(image, threshold=magnitude)
    elif op == "AutoContrast":
        image = TF.autocontrast(image)
    elif op == "Equalize":
        image = TF.equalize(image)
    else:
        image = TF.invert(image)
    return image * 2 - 1


def _geometric(t: torch.Tensor, op: str, m: float, fill: float) -> torch.Tensor:
    """torchvision's AutoAugment geometry: shears about the top-left corner, whole-pixel
    translations, rotations about the centre."""
    nearest = TF.InterpolationMode.NEAREST
    if op == "Rotate":
        return TF.rotate(t, angle=m, interpolation=nearest, fill=fill)
    if op in ("ShearX", "ShearY"):
        degrees = math.degrees(math.atan(m))
        shear = [degrees, 0.0] if op == "ShearX" else [0.0, degrees]
        return TF.affine(
            t, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, interpolation=nearest, fill=fill, center=[0, 0]
        )
    translate = [int(m), 0] if op == "TranslateX" else [0, int(m)]
    return TF.affine(t, angle=0.0, translate=translate, scale=1.0, shear=[0.0, 0.0], interpolation=nearest, fill=fill)


def _device(generator: torch.Generator | None) -> torch.device | str:
    return generator.device if generator is not None else "cpu"


def _randint(high: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(high, (), generator=generator, device=_device(generator)))


def _uniform(n: int, generator: torch.Generator | None, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """n draws from U(low, high) as a float64 CPU tensor, from ``generator`` or torch's global RNG."""
    u = torch.rand(n, generator=generator, device=_device(generator), dtype=torch.float64).cpu()
    return low + (high - low) * u
