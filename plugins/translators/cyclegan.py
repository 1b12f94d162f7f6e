"""CycleGAN: unpaired image-to-image translation with cycle consistency, source -> target look."""
from __future__ import annotations

from itertools import chain
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.functional import l1_loss, mse_loss

from dabench.errors import DabenchError
from dabench.hparams import HParam, choice, log_uniform
from dabench.translator import Translator

CHANNELS = 3  # RGB in and out: the generators are built before any image is seen
Losses = dict[str, torch.Tensor]


class ResidualBlock(nn.Module):
    """Two reflection-padded 3x3 convs with instance norm, added to the input."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3), nn.InstanceNorm2d(width), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3), nn.InstanceNorm2d(width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def generator(ngf: int, blocks: int) -> nn.Sequential:
    """The ResNet generator: 7x7 conv, two stride-2 convs down, residual blocks at 4 * ngf
    channels, two transposed convs up, 7x7 conv, tanh. Instance norm without affine."""
    layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(CHANNELS, ngf, 7),
                               nn.InstanceNorm2d(ngf), nn.ReLU(True)]
    for width in (ngf, 2 * ngf):
        layers += [nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.InstanceNorm2d(2 * width), nn.ReLU(True)]
    layers += [ResidualBlock(4 * ngf) for _ in range(blocks)]
    for width in (4 * ngf, 2 * ngf):
        layers += [nn.ConvTranspose2d(width, width // 2, 3, stride=2, padding=1, output_padding=1),
                   nn.InstanceNorm2d(width // 2), nn.ReLU(True)]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, CHANNELS, 7), nn.Tanh()]
    return nn.Sequential(*layers)


def patch_discriminator(ndf: int, n_layers: int = 3) -> nn.Sequential:
    """The 70x70 PatchGAN (n_layers 3): 4x4 convs, LeakyReLU 0.2, instance norm after all but the
    first; the last two convs have stride 1. One score per overlapping 70x70 patch."""
    widths = [ndf * min(2 ** i, 8) for i in range(n_layers + 1)]
    layers: list[nn.Module] = [nn.Conv2d(CHANNELS, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        stride = 2 if i < n_layers else 1
        layers += [nn.Conv2d(a, b, 4, stride=stride, padding=1), nn.InstanceNorm2d(b), nn.LeakyReLU(0.2, True)]
    layers.append(nn.Conv2d(widths[-1], 1, 4, stride=1, padding=1))
    return nn.Sequential(*layers)


def init_normal(module: nn.Module) -> None:
    """N(0, 0.02) weights and zero biases for every (transposed) conv, as the reference."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        nn.init.zeros_(module.bias)


def lsgan(scores: torch.Tensor, label: float) -> torch.Tensor:
    """Least-squares GAN loss: mean squared distance of the patch scores to 1 (real) or 0 (fake)."""
    return mse_loss(scores, torch.full_like(scores, label))


def check_images(*xs: torch.Tensor) -> None:
    """Sizes the networks can take: the generator halves twice, the discriminator needs 24 px."""
    for x in xs:
        c, h, w = x.shape[-3:]
        if c != CHANNELS or h % 4 or w % 4 or min(h, w) < 24:
            raise DabenchError(
                f"CycleGAN translates RGB images whose sides are divisible by 4 and at least 24 px; got images "
                f"of shape {tuple(x.shape)}. Resize or crop them (e.g. --image-size 256)."
            )


class CycleGAN(Translator):
    """CycleGAN: unpaired source-to-target translation with cycle consistency (Zhu et al., ICCV 2017).

    G maps source to target and F target to source; PatchGAN discriminators D_tgt and D_src tell
    real images of their domain from translated ones. Generators minimise the LSGAN loss plus
    cycle_weight * (|F(G(s)) - s| + |G(F(t)) - t|) plus, scaled by cycle_weight as the reference
    does, identity_weight * (|G(t) - t| + |F(s) - s|). Discriminators (frozen during the generator
    step) see translated images through a history pool of pool_size. Adam 2e-4, betas (0.5,
    0.999); the learning rate is constant for the first half of the steps, then falls linearly
    to 0, per step rather than the reference's per epoch. Training sees each image as the
    reference loads it: scaled at its own aspect so the shorter side is ``load_size`` (286), then a
    random ``crop_size`` (256) square, each domain at its own size (a whole 1280x720 GTA5 frame
    costs 14 times a 256 crop); translation runs on whole images (the generators are fully
    convolutional). Images: RGB in [-1, 1], sides divisible by 4 and at least 24 px (the
    discriminator's depth).
    """

    name = "cyclegan"
    trainable = True
    hparams = {
        "lr": HParam(2e-4, log_uniform(-4.3, -3.3), "Adam learning rate of generators and discriminators"),
        "cycle_weight": HParam(10.0, choice([5.0, 10.0, 20.0]), "weight of the L1 cycle-consistency loss"),
        "identity_weight": HParam(0.5, choice([0.0, 0.5]),
                                  "weight of the L1 identity loss, times cycle_weight; 0 turns it off"),
        "ngf": HParam(64, None, "generator width (channels of its first conv)"),
        "ndf": HParam(64, None, "discriminator width (channels of its first conv)"),
        "blocks": HParam(9, None, "residual blocks of the generators: 9 at 256 px, 6 at 128 px in the paper"),
        "pool_size": HParam(50, None, "translated images kept to show the discriminators; 0 shows only the newest"),
        "load_size": HParam(286, None, "training: each image scaled so its shorter side is this (0: as it is)"),
        "crop_size": HParam(256, None, "training: a random crop_size x crop_size window of it (0: the whole image)"),
    }

    def __init__(self, hparams: dict[str, Any], steps: int):
        super().__init__(hparams, steps)
        self.G = generator(self.hp["ngf"], self.hp["blocks"])  # source -> target
        self.F = generator(self.hp["ngf"], self.hp["blocks"])  # target -> source
        self.D_tgt = patch_discriminator(self.hp["ndf"])  # real target vs G(source)
        self.D_src = patch_discriminator(self.hp["ndf"])  # real source vs F(target)
        self.apply(init_normal)
        self.pools: dict[str, list[torch.Tensor]] = {"fake_tgt": [], "fake_src": []}
        betas = (0.5, 0.999)
        self.optims["G"] = torch.optim.Adam(chain(self.G.parameters(), self.F.parameters()), self.hp["lr"], betas=betas)
        self.optims["D"] = torch.optim.Adam(chain(self.D_tgt.parameters(), self.D_src.parameters()), self.hp["lr"],
                                            betas=betas)

    def lr_at(self, step: int) -> float:
        """Constant for the first half of the steps, then linear decay towards 0 at the last."""
        half = self.steps // 2
        return self.hp["lr"] * (1 - max(0, step - half) / max(1, self.steps - half))

    def training_view(self, x: torch.Tensor) -> torch.Tensor:
        """The reference's training preprocessing: shorter side scaled to ``load_size``, then one
        random ``crop_size`` square per image (torch's RNG, so a resumed run draws the same)."""
        load, crop = self.hp["load_size"], self.hp["crop_size"]
        if load:
            h, w = x.shape[-2:]
            scale = load / min(h, w)
            x = F.interpolate(x, size=(max(load, round(h * scale)), max(load, round(w * scale))), mode="bilinear",
                              align_corners=False, antialias=scale < 1)
        if not crop:
            return x
        h, w = x.shape[-2:]
        if crop > min(h, w):
            raise DabenchError(f"CycleGAN: -H cyclegan_crop_size={crop} is larger than the images ({h}x{w} after "
                               f"load_size {load}). Use a crop_size of at most {min(h, w)}, or 0 for whole images.")
        tops = torch.randint(h - crop + 1, (len(x),)).tolist()
        lefts = torch.randint(w - crop + 1, (len(x),)).tolist()
        return torch.stack([xi[:, t : t + crop, l : l + crop] for xi, t, l in zip(x, tops, lefts)])

    def update(self, src_x: torch.Tensor, tgt_x: torch.Tensor, step: int) -> dict[str, float]:
        src_x, tgt_x = self.training_view(src_x), self.training_view(tgt_x)
        check_images(src_x, tgt_x)
        self.train()
        for optim in self.optims.values():
            for group in optim.param_groups:
                group["lr"] = self.lr_at(step)
        losses, fake_src, fake_tgt = self.generator_step(src_x, tgt_x)
        losses["d"] = self.discriminator_step(src_x, tgt_x, fake_src, fake_tgt)
        return losses

    def generator_losses(self, src_x: torch.Tensor, tgt_x: torch.Tensor) -> tuple[Losses, torch.Tensor, torch.Tensor]:
        """The weighted generator losses, and the translated images F(t) and G(s)."""
        fake_tgt, fake_src = self.G(src_x), self.F(tgt_x)
        losses = {
            "g_gan": lsgan(self.D_tgt(fake_tgt), 1.0) + lsgan(self.D_src(fake_src), 1.0),
            "cycle": self.hp["cycle_weight"] * (l1_loss(self.F(fake_tgt), src_x) + l1_loss(self.G(fake_src), tgt_x)),
            "identity": torch.zeros((), device=src_x.device),
        }
        if self.hp["identity_weight"] > 0:
            losses["identity"] = self.hp["cycle_weight"] * self.hp["identity_weight"] * (
                l1_loss(self.G(tgt_x), tgt_x) + l1_loss(self.F(src_x), src_x))
        return losses, fake_src, fake_tgt

    def generator_step(self, src_x: torch.Tensor,
                       tgt_x: torch.Tensor) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        """One Adam step of G and F, the discriminators frozen; returns the losses and the fakes."""
        self.optims["G"].zero_grad(set_to_none=True)
        discriminators = [self.D_tgt, self.D_src]
        for d in discriminators:
            d.requires_grad_(False)
        losses, fake_src, fake_tgt = self.generator_losses(src_x, tgt_x)
        sum(losses.values()).backward()
        for d in discriminators:
            d.requires_grad_(True)
        self.optims["G"].step()
        return {k: v.item() for k, v in losses.items()}, fake_src, fake_tgt

    def discriminator_step(self, src_x: torch.Tensor, tgt_x: torch.Tensor,
                           fake_src: torch.Tensor, fake_tgt: torch.Tensor) -> float:
        """One Adam step of both discriminators: 0.5 (|D(real) - 1|^2 + |D(fake)|^2) each, the
        fakes drawn through the history pools."""
        self.optims["D"].zero_grad(set_to_none=True)
        fake_tgt = self.pool_query("fake_tgt", fake_tgt.detach())
        fake_src = self.pool_query("fake_src", fake_src.detach())
        loss = (0.5 * (lsgan(self.D_tgt(tgt_x), 1.0) + lsgan(self.D_tgt(fake_tgt), 0.0))
                + 0.5 * (lsgan(self.D_src(src_x), 1.0) + lsgan(self.D_src(fake_src), 0.0)))
        loss.backward()
        self.optims["D"].step()
        return loss.item()

    def pool_query(self, name: str, images: torch.Tensor) -> torch.Tensor:
        """Shrivastava et al.'s history of generated images: until the pool is full each image is
        stored and returned; then, with probability 1/2, it replaces a random stored image, which
        is returned instead. Draws from torch's global RNG, so a resumed run draws the same."""
        pool, size = self.pools[name], self.hp["pool_size"]
        if size == 0:
            return images
        out = []
        for image in images:
            if len(pool) < size:
                pool.append(image.clone())  # a copy: a view would keep (and save) the whole batch
                out.append(image)
            elif torch.rand(()) < 0.5:
                i = int(torch.randint(size, ()))
                out.append(pool[i].to(image))
                pool[i] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def translate(self, src_x: torch.Tensor, tgt_x: torch.Tensor) -> torch.Tensor:
        check_images(src_x)
        training = self.G.training
        self.G.eval()
        with torch.no_grad():
            out = self.G(src_x.to(next(self.G.parameters()).dtype))
        self.G.train(training)
        return out.to(src_x.dtype)

    # The pools are part of the training state: a resumed run must show D the same images.
    def get_extra_state(self) -> dict[str, list[torch.Tensor]]:
        return {name: list(pool) for name, pool in self.pools.items()}

    def set_extra_state(self, state: dict[str, list[torch.Tensor]]) -> None:
        self.pools = {name: list(pool) for name, pool in state.items()}
