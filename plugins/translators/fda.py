"""FDA: Fourier domain adaptation, a source image given a target image's low-frequency amplitude."""
from __future__ import annotations

import math
import warnings

import torch

from dabench.errors import DabenchError
from dabench.hparams import HParam, choice
from dabench.translator import Translator


def low_frequency_window(h: int, w: int, b: int, device: torch.device | None = None) -> torch.Tensor:
    """True on the four b x b corners of an unshifted (h, w) spectrum: the 2b x 2b block around DC."""
    rows = torch.zeros(h, dtype=torch.bool, device=device)
    cols = torch.zeros(w, dtype=torch.bool, device=device)
    rows[:b] = rows[h - b:] = True
    cols[:b] = cols[w - b:] = True
    return rows[:, None] & cols[None, :]


def swap_low_amplitude(src: torch.Tensor, tgt: torch.Tensor, b: int) -> torch.Tensor:
    """The source images with the amplitude of their 2-D spectra (per channel) replaced by the
    target's inside the low-frequency window of half-size b; the source phase is kept."""
    fs, ft = torch.fft.fft2(src), torch.fft.fft2(tgt)
    window = low_frequency_window(src.shape[-2], src.shape[-1], b, src.device)
    amplitude = torch.where(window, ft.abs(), fs.abs())
    return torch.fft.ifft2(torch.polar(amplitude, fs.angle())).real


def translate_pixels(src_x: torch.Tensor, tgt_x: torch.Tensor, b: int, clip: bool = True) -> torch.Tensor:
    """The swap on 0-255 pixels (the paper's scale: the DC term depends on it) of images given in
    [-1, 1], returned in [-1, 1] units, clamped there with ``clip``; computed in float32 at least."""
    dtype = torch.promote_types(src_x.dtype, torch.float32)  # the FFT needs float32 at least
    out = swap_low_amplitude((src_x.to(dtype) + 1) * 127.5, (tgt_x.to(dtype) + 1) * 127.5, b) / 127.5 - 1
    return (out.clamp(-1, 1) if clip else out).to(src_x.dtype)


class FDA(Translator):
    """FDA: source images take the target's low-frequency amplitude spectrum (Yang & Soatto, CVPR 2020).

    Each source image keeps its phase and, per channel, gets the FFT amplitude of the paired
    target image inside a window of half-size b = floor(min(H, W) * beta) around DC (the four
    b x b corners of the unshifted spectrum, as the authors' torch code; the window is not
    symmetric about DC, so the inverse FFT is complex and its real part is taken). b = 0 is the
    identity. As in the paper the swap acts on 0-255 pixels (it changes the DC term, so the
    pixel range matters): images in [-1, 1] are mapped to [0, 255] and back. The result is then
    clamped to [-1, 1] so it stays a valid image; the authors do not clip. Not trained.
    """

    name = "fda"
    hparams = {
        "beta": HParam(0.01, choice([0.01, 0.05, 0.09]),
                       "window half-size as a fraction of min(H, W); the paper's three bands 0.01, 0.05, 0.09"),
    }

    def translate(self, src_x: torch.Tensor, tgt_x: torch.Tensor) -> torch.Tensor:
        if tgt_x.shape[-3:] != src_x.shape[-3:]:
            raise DabenchError(
                f"FDA pairs each source image with a target image of the same size; got source "
                f"{tuple(src_x.shape)} and target {tuple(tgt_x.shape)}. Resize or crop the target images "
                "to the source size."
            )
        b = math.floor(min(src_x.shape[-2:]) * self.hp["beta"])
        if b == 0:  # the window is empty: FDA would silently be no translation at all
            warnings.warn(f"fda: beta {self.hp['beta']} on images {min(src_x.shape[-2:])} px high gives an empty "
                          f"low-frequency window, so the source images are not translated. Use -H fda_beta="
                          f"{1 / min(src_x.shape[-2:]):.3g} or more at this size (the paper's 0.01 is for 512 px and up).",
                          stacklevel=2)
            return src_x
        return translate_pixels(src_x, tgt_x, b)
