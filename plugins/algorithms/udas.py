"""UDAS: image translation, multi-level output-space adaptation, Domain CutMix and self-training."""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dabench.algorithm import Stage, StageContext
from dabench.layers import upsample
from dabench.augment import GEOMETRIC_OPS, auto_augment, domain_cutmix, draw_policy, photometric, sample_lambda
from dabench.cache import CachedImages, CachedLabels, KeyedFolder, key_hash, to_uint8
from dabench.data import Batch, get_batch, ordered_batches
from dabench.errors import DabenchError
from dabench.hparams import HParam, choice, log_uniform, uniform
from dabench.registry import translators
from dabench.runfolder import slug
from dabench.tasks import IGNORE_INDEX
from dabench.translator import cover
from dabench_plugins.algorithms.adaptsegnet import AdaptSegNet

TRANSLATE, ADAPT, SELFTRAIN = "translate", "adapt", "self-train"


def symmetric_ce(p_logits: torch.Tensor, a_logits: torch.Tensor) -> torch.Tensor:
    """UDAS's L_kl as the paper writes it: -sum_c F_a log F_p - sum_c F_p log F_a per pixel (a symmetric
    cross-entropy: the symmetric KL plus the entropies of both maps, so it also asks for confident
    predictions), in float32. The paper writes the sum over h, w and c; it is averaged over pixels here,
    as L_seg is, since the sum would weigh it H*W times L_seg. Its minimum, 0, is two equal one-hot maps."""
    log_p, log_a = F.log_softmax(p_logits.float(), 1), F.log_softmax(a_logits.float(), 1)
    return -(log_a.exp() * log_p + log_p.exp() * log_a).sum(1).mean()


def symmetric_kl(p_logits: torch.Tensor, a_logits: torch.Tensor) -> torch.Tensor:
    """KL(F_p || F_a) + KL(F_a || F_p) per pixel, averaged: sum_c (F_p - F_a)(log F_p - log F_a).
    Zero exactly when the primary and auxiliary distributions agree."""
    log_p, log_a = F.log_softmax(p_logits.float(), 1), F.log_softmax(a_logits.float(), 1)
    return ((log_p.exp() - log_a.exp()) * (log_p - log_a)).sum(1).mean()


def teacher_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per pixel, averaged over the labelled pixels (label != 255)."""
    log_t, log_s = F.log_softmax(teacher_logits.float(), 1), F.log_softmax(student_logits.float(), 1)
    kl = (log_t.exp() * (log_t - log_s)).sum(1)
    mask = labels != IGNORE_INDEX
    return kl[mask].sum() / mask.sum().clamp(min=1)


class UDAS(AdaptSegNet):
    """UDAS: translation + multi-level adversarial adaptation + Domain CutMix + self-training.

    Stages, each resumable and shown in the progress display:
    1. translate: a translator plugin (``cyclegan`` trains on unpaired source and target images,
       ``fda`` needs no training, ``none``); the translated source set is written once to a cache
       folder keyed by the translator's config and the data, and reused by later runs.
    2. adapt: AdaptSegNet's multi-level output-space adversarial training on the translated
       source, plus the paper's consistency between the primary and auxiliary outputs on target
       images, L_total = L_seg + L_adv + L_kl with L_kl = -sum F_a log F_p - sum F_p log F_a
       (``symmetric_ce``, mean over pixels as L_seg is; weight ``lambda_kl`` 1 as in the paper. From
       scratch at lr 0.01 on the streets pair, weight 1 diverged: after 200 steps the segmentation
       loss averaged 44 and target mIoU was 7.8, against 0.72 and 30.0 at 0.1. Its entropy terms
       push logits to grow. The paper's setting, ImageNet weights at lr 2.5e-4, is not measured
       here, so the default stays the paper's).
       With labelled target images (``--tgt-labeled N``), Domain CutMix pastes a box of a labelled
       target image (and its labels) into each translated source image, then AutoAugment moves
       image and mask together; the mixed samples replace the plain source ones in L_seg. As in
       the paper, this is the only way labelled target pixels reach the adaptation stage, so the
       model does not come to depend on them (``-H tgt_direct=true`` also trains on them as a
       plain group, dabench 0.1's behaviour; ``-H consistency=kl`` is dabench 0.1's symmetric KL,
       which drops the two entropy terms). The paper does not say how CutMix boxes are drawn:
       here one lambda ~ Beta(1, 1) per batch and one box per image, inside the image (CutMix's
       code, clovaai/CutMix-PyTorch train.py rand_bbox, draws one box per batch, clipped at the
       border); a labelled target image of another size is resized to the source's first. This stage's update is checked step for step against
       tests/reference/udas.py, the paper's L_total with AdaptSegNet's multi-level iteration
       (train_gta2cityscapes_multi.py) written out (tests/test_parity_udas.py).
    3. self-train 1..R: the current model is the teacher; it labels every unlabelled target
       image from K AutoAugment samples (geometric ops inverted, the most confident view per pixel,
       pixels under ``threshold`` ignored); the student (starting from the teacher) trains on these
       pseudo-labels plus the labelled data, with KL(teacher || student) on the labelled pixels.
       After each round the student becomes the teacher. Pseudo-labels are cached in the run folder.
    Ablations are hyperparameters: translator=none, adversarial=false, cutmix=false, selftrain_rounds=0.
    """

    name = "udas"
    target_labels = "optional"
    hparams = {
        **AdaptSegNet.hparams,
        "translator": HParam("cyclegan", choice(["none", "fda", "cyclegan"]),
                             "input-level adaptation: a translator plugin (dabench list translators)"),
        "translator_steps": HParam(0, None, "training steps of a trainable translator; 0 = as many as --steps"),
        "adversarial": HParam(True, None, "stage 2's output-space adversarial loss and primary/auxiliary KL on the "
                                          "target; false trains on (translated) source labels alone"),
        "lambda_kl": HParam(1.0, log_uniform(-2.5, 0), "weight of the primary/auxiliary consistency L_kl on target "
                                                       "images (paper: 1)"),
        "consistency": HParam("ce", None, "L_kl's form: ce (the paper's symmetric cross-entropy) or kl (the "
                              "symmetric KL, without the entropy terms)", choices=("ce", "kl")),
        "tgt_direct": HParam(False, None, "adaptation stage: also train on labelled target images as a plain group "
                                          "(the paper uses them only through Domain CutMix)"),
        "cutmix": HParam(True, None, "Domain CutMix of labelled target boxes into source images (needs --tgt-labeled)"),
        "cutmix_alpha": HParam(1.0, uniform(0.2, 2.0), "CutMix share lambda ~ Beta(alpha, alpha) of the source image kept"),
        "autoaugment": HParam(True, None, "AutoAugment on the mixed samples (geometric ops on image and mask)"),
        "selftrain_rounds": HParam(1, choice([0, 1, 2]), "self-training rounds (0: none)"),
        "selftrain_steps": HParam(0, None, "steps per self-training round; 0 = as many as --steps"),
        "views": HParam(3, choice([1, 2, 3, 4]), "K AutoAugment samples per target image for pseudo-labels (paper: 3)"),
        "threshold": HParam(0.6, uniform(0.5, 0.9), "pseudo-label confidence threshold; pixels under it are ignored"),
        "lambda_teacher": HParam(1.0, log_uniform(-1, 0.5), "weight of KL(teacher || student) on labelled pixels"),
    }

    @classmethod
    def space(cls, task: str, regime: str | None = None) -> dict[str, HParam]:
        """UDAS's own space (in ``regime``'s defaults) plus every installed translator's, as
        ``<translator>_<name>``."""
        space = super().space(task, regime)
        for name in translators.names():
            for key, p in translators.get(name).hparams.items():
                space[f"{name}_{key}"] = p.in_regime(regime)
        return space

    def __init__(self, backbone: nn.Module, num_classes: int, hparams: dict, steps: int):
        super().__init__(backbone, num_classes, hparams, steps)
        self.check(self.hp)
        name = self.hp["translator"]
        cls = translators.get(name)
        self.translator_hp = {k: self.hp.get(f"{name}_{k}", p.default) for k, p in cls.hparams.items()}
        self.translator_steps = (self.hp["translator_steps"] or steps) if cls.trainable else 0
        self.translator = cls(self.translator_hp, self.translator_steps)
        self.optims |= {f"translator_{k}": o for k, o in self.translator.optims.items()}
        self.selftrain_steps = self.hp["selftrain_steps"] or steps
        self.teacher = copy.deepcopy(backbone).requires_grad_(False).eval() if self.hp["selftrain_rounds"] else None
        self.stage: Stage | None = None

    @staticmethod
    def check(hp: dict) -> None:
        rules = {"views": (hp["views"] >= 1, "a whole number of 1 or more"),
                 "threshold": (0 < hp["threshold"] <= 1, "a confidence in (0, 1]"),
                 "selftrain_rounds": (hp["selftrain_rounds"] >= 0, "0 or more"),
                 "selftrain_steps": (hp["selftrain_steps"] >= 0, "0 (as many as --steps) or more"),
                 "translator_steps": (hp["translator_steps"] >= 0, "0 (as many as --steps) or more"),
                 "cutmix_alpha": (hp["cutmix_alpha"] > 0, "a Beta parameter > 0")}
        for key, (ok, expected) in rules.items():
            if not ok:
                raise DabenchError(f"udas: -H {key}={hp[key]} is out of range; expected {expected}.")

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher labels and guides; its batch-norm statistics stay fixed
        return self

    def stages(self) -> list[Stage]:
        rounds = [Stage(f"{SELFTRAIN} {r}", self.selftrain_steps) for r in range(1, self.hp["selftrain_rounds"] + 1)]
        return [Stage(TRANSLATE, self.translator_steps, evaluate=False), Stage(ADAPT, self.steps), *rounds]

    # Stages ---------------------------------------------------------------------------------

    def begin_stage(self, stage: Stage, ctx: StageContext, resumed: bool):
        self.stage = stage
        cache = self.translation_cache(ctx)
        if stage.name == TRANSLATE:
            return None if cache.complete else ctx.data
        source = self.translated_source(ctx, cache)
        if stage.name == ADAPT:
            return dataclasses.replace(ctx.data, src_train=source)
        if not resumed:  # a new round: the model so far becomes the teacher
            self.teacher.load_state_dict(self.segmenter.state_dict())
        rnd = int(stage.name.split()[-1])
        labels = self.pseudo_label(ctx, rnd)
        return dataclasses.replace(ctx.data, src_train=source, tgt_train=CachedLabels(ctx.data.tgt_train, labels))

    def translation_cache(self, ctx: StageContext) -> KeyedFolder:
        """The folder of translated source images this config makes: keyed by the translator, its
        training and the data (pair, sizes, splits, seed), never by the segmentation settings."""
        name = self.hp["translator"]
        key = {"translator": name, "hparams": self.translator_hp, "steps": self.translator_steps,
               "batch_size": self.hp["batch_size"] if self.translator_steps else None, "data": ctx.data_key}
        pair = f"{slug(ctx.data_key.get('src', 'src'))}_to_{slug(ctx.data_key.get('tgt', 'tgt'))}"
        return KeyedFolder(ctx.cache_dir / "translated" / pair / f"{name}-{key_hash(key)}", key)

    def translated_source(self, ctx: StageContext, cache: KeyedFolder):
        """Source train with translated images (built once, then read from the cache)."""
        src = ctx.data.src_train
        if self.hp["translator"] == "none":
            return src
        with cache.lock():
            if not cache.complete:
                self.translate_all(ctx, cache)
        return CachedImages(src, cache)

    def translate_all(self, ctx: StageContext, cache: KeyedFolder) -> None:
        """Translate every source training image once, pairing each with a seeded random target
        image (FDA takes its spectrum), and write them to ``cache``."""
        src, tgt = ctx.data.src_train, ctx.data.tgt_train
        cache.start()
        rng = np.random.default_rng([ctx.seed, 11])  # which target image each source image is paired with
        bs = ctx.eval_batch
        ctx.reporter.start(len(src), 0, "translate source")
        done = 0
        self.translator.eval()
        for x, _ in ordered_batches(src, bs, ctx.workers):
            t = get_batch(tgt, rng.integers(len(tgt), size=len(x)).tolist())
            x = x.to(ctx.device)
            with torch.no_grad(), ctx.autocast():
                y = self.translator.translate(x, cover(t.to(ctx.device), x.shape[-2:]))
            cache.write(done, to_uint8(y))
            done += len(x)
            ctx.reporter.advance(done, {})
        ctx.reporter.stop()
        self.translator.train()
        cache.finish()

    @torch.no_grad()
    def pseudo_label(self, ctx: StageContext, rnd: int) -> KeyedFolder:
        """Round ``rnd``'s pseudo-labels of every unlabelled target image, made by the teacher (in
        the run folder; a folder cut off while written is made again)."""
        tgt = ctx.data.tgt_train
        key = {"round": rnd, "views": self.hp["views"], "threshold": self.hp["threshold"], "images": len(tgt)}
        folder = KeyedFolder(ctx.run_dir / "pseudo" / f"round{rnd}", key)
        if folder.complete:
            return folder
        folder.start()
        gen = torch.Generator(device="cpu").manual_seed(ctx.seed * 1000 + rnd)
        bs = ctx.eval_batch
        ctx.reporter.start(len(tgt), 0, f"pseudo-label round {rnd}")
        done, kept = 0, 0
        for i in range(0, len(tgt), bs):
            x = get_batch(tgt, list(range(i, min(i + bs, len(tgt))))).to(ctx.device)
            with ctx.autocast():
                labels, _ = pseudo_labels(lambda v: self.teacher(v)[0], x, self.hp["views"], self.hp["threshold"], gen)
            kept += int((labels != IGNORE_INDEX).sum())
            folder.write(done, labels.to(torch.uint8).cpu().numpy())
            done += len(x)
            ctx.reporter.advance(done, {"kept": kept / max(1, done * x.shape[-1] * x.shape[-2])})
        ctx.reporter.stop()
        folder.finish()
        return folder

    # Updates ---------------------------------------------------------------------------------

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        if self.stage.name == TRANSLATE:
            return self.translator.update(batch.src_x, batch.tgt_x, step)  # each domain at its own size
        if self.stage.name == ADAPT:
            return self.adapt(batch, step)
        return self.self_train(batch, step)

    def labelled(self, batch: Batch, direct: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The labelled groups: (translated) source, Domain-CutMixed with labelled target images when
        there are any, then (``direct``) the labelled target images themselves."""
        x, y = batch.src_x, batch.src_y
        lab = batch.tgt_labeled
        if lab is None:
            return [(x, y)]
        if self.hp["cutmix"]:
            x, y = domain_cutmix(x, y, lab.x, lab.y, sample_lambda(self.hp["cutmix_alpha"]))
            if self.hp["autoaugment"]:
                x, y = auto_augment(x, y)
        return [(x, y), (lab.x, lab.y)] if direct else [(x, y)]

    def adapt(self, batch: Batch, step: int) -> dict[str, float]:
        seg_optims = [self.optims["seg"], self.optims["disc"]]
        self.poly(step, self.steps, seg_optims)
        parts = self.labelled(batch, direct=self.hp["tgt_direct"])  # the paper: labelled target only through CutMix
        if not self.hp["adversarial"]:
            loss, _ = self.supervised(parts)
            self.optimise(loss, self.optims["seg"])
            return {"seg": loss.item()}

        form = symmetric_ce if self.hp["consistency"] == "ce" else symmetric_kl

        def consistency(tgt_out):
            kl = self.hp["lambda_kl"] * form(tgt_out["main"], tgt_out["aux"]) if "aux" in tgt_out else 0.0
            return kl, {"kl": float(kl.detach()) if torch.is_tensor(kl) else kl}

        return self.adapt_step(parts, batch.tgt_x, consistency)

    def self_train(self, batch: Batch, step: int) -> dict[str, float]:
        self.poly(step, self.selftrain_steps, [self.optims["seg"]])
        parts = self.labelled(batch, direct=True)  # self-training uses labelled target images directly
        seg, outs = self.supervised(parts)
        kl = 0.0
        for (x, y), out in zip(parts, outs):
            kl = kl + teacher_kl(upsample(self.teacher(x)[0], x.shape[-2:]), out["main"], y)
        pseudo, _ = self.supervised([(batch.tgt_x, batch.tgt_pseudo)])
        loss = seg + pseudo + self.hp["lambda_teacher"] * kl
        self.optimise(loss, self.optims["seg"])
        return {"seg": seg.item(), "pseudo": pseudo.item(), "teacher_kl": float(kl.detach())}


# Pseudo-labels from augmented views (UDAS sec. 4.2.5) -------------------------------------------------
# The teacher predicts on K AutoAugment views in one forward pass, each view's geometric transform
# is undone on the probabilities, and per pixel the most confident view gives the class; pixels
# below the threshold are ignored (255).


@dataclass
class Views:
    """How ``autoaugment_views`` made its k * N views (view-major: view v of image n is row v * N + n).
    ``theta`` (k * N, 2, 3) is each view's sampling matrix in ``affine_grid``'s normalised
    coordinates: view(p) = image(theta @ [p, 1])."""

    k: int
    theta: torch.Tensor


def autoaugment_views(x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, Views]:
    """k samples of AutoAugment's ImageNet policy for each image of x (N, C, H, W), stacked view-major
    (k * N, C, H, W) for one forward pass: UDAS's pseudo-label views (sec. 4.2.5, K = 3).

    Each view draws the policy with ``draw_policy``, as ``auto_augment`` does. Its photometric ops change the image; its
    geometric ops (rotation about the centre, shears, translations, on torchvision's AutoAugment
    scales) are composed into one affine map, applied last with bilinear resampling (outside: 0, mid
    grey), and recorded in ``Views.theta`` so that ``invert_views`` maps each pixel back. Applying
    the photometric ops before the geometric ones, not in the policy's order, changes nothing for
    the per-pixel ops and only the grey border's share of the histogram for Equalize/AutoContrast."""
    if k < 1:
        raise ValueError(f"autoaugment_views needs k >= 1 views, got {k}.")
    n, _, height, width = x.shape
    images, thetas = [], []
    for _ in range(k):
        for i in range(n):
            xi, forward = x[i : i + 1], torch.eye(3, dtype=torch.float64)
            for op, m in draw_policy(height, width, generator):
                if op in GEOMETRIC_OPS:
                    forward = _pixel_map(op, m, height, width) @ forward
                else:
                    xi = photometric(xi, op, m)
            images.append(xi)
            thetas.append(_sampling_theta(forward, height, width))
    theta = torch.stack(thetas).to(x.device, torch.float32)
    return _warp(torch.cat(images), theta, padding="zeros"), Views(k, theta)


def _pixel_map(op: str, m: float, height: int, width: int) -> torch.Tensor:
    """The 3x3 map of a geometric op from input to output pixel coordinates (x right, y down, pixel
    centres at integers): rotation by m degrees about the image centre, shear x += m y (or y += m x),
    translation by m pixels."""
    a = torch.eye(3, dtype=torch.float64)
    if op == "Rotate":
        cx, cy = (width - 1) / 2, (height - 1) / 2
        c, s = math.cos(math.radians(m)), math.sin(math.radians(m))
        a[:2, :2] = torch.tensor([[c, s], [-s, c]], dtype=torch.float64)  # counter-clockwise on screen
        a[:2, 2] = torch.tensor([cx - c * cx - s * cy, cy + s * cx - c * cy], dtype=torch.float64)
    elif op == "ShearX":
        a[0, 1] = m
    elif op == "ShearY":
        a[1, 0] = m
    elif op == "TranslateX":
        a[0, 2] = m
    else:
        a[1, 2] = m
    return a


def _sampling_theta(forward: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``affine_grid``'s (2, 3) matrix (normalised coordinates, align_corners=False) that samples the
    image a pixel map ``forward`` makes: output -> input is the inverse map, N forward^-1 N^-1."""
    to_norm = torch.tensor([[2 / width, 0, 1 / width - 1], [0, 2 / height, 1 / height - 1], [0, 0, 1]],
                           dtype=torch.float64)
    return (to_norm @ torch.linalg.inv(forward) @ torch.linalg.inv(to_norm))[:2]


def invert_views(probs: torch.Tensor, params: Views) -> tuple[torch.Tensor, torch.Tensor]:
    """Undo each view's geometric transform on the network's softmax outputs (k * N, C, H, W) at
    input resolution. Returns probabilities (k, N, C, H, W) aligned with the original images
    (float32) and ``valid`` (k, N, H, W): False where the view saw nothing of that pixel."""
    total, channels, height, width = probs.shape
    if total != params.theta.shape[0]:
        raise ValueError(f"invert_views got {total} probability maps for {params.theta.shape[0]} views.")
    theta = params.theta.double()
    last_row = torch.tensor([0.0, 0.0, 1.0], dtype=theta.dtype, device=theta.device).expand(total, 1, 3)
    inverse = torch.linalg.inv(torch.cat([theta, last_row], 1))[:, :2].to(probs.device, torch.float32)
    grid = F.affine_grid(inverse, [total, channels, height, width], align_corners=False)
    back = F.grid_sample(probs.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    valid = (grid.abs() <= 1).all(-1)
    k = params.k
    return back.view(k, total // k, channels, height, width), valid.view(k, total // k, height, width)


def max_confidence_labels(
    probs: torch.Tensor, valid: torch.Tensor, threshold: float = 0.6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel, the class of the most confident view (confidence = max softmax probability, 0
    where the view is not valid). probs (k, N, C, H, W), valid (k, N, H, W). Returns labels
    (N, H, W) int64, 255 where the best confidence is below ``threshold``, and that confidence."""
    confidence, classes = probs.max(dim=2)
    confidence = torch.where(valid, confidence, torch.zeros_like(confidence))
    best, view = confidence.max(dim=0)
    labels = classes.gather(0, view[None])[0]
    labels = torch.where(best < threshold, torch.full_like(labels, IGNORE_INDEX), labels)
    return labels, best


@torch.no_grad()
def pseudo_labels(
    predict: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    k: int = 3,
    threshold: float = 0.6,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """UDAS's multi-view pseudo-labels of images x: ``predict`` (the teacher, returning logits)
    runs once on all k views stacked; see ``max_confidence_labels`` for what comes back."""
    views, params = autoaugment_views(x, k, generator)
    probs = upsample(predict(views), x.shape[-2:]).float().softmax(1)
    return max_confidence_labels(*invert_views(probs, params), threshold)


def _warp(x: torch.Tensor, theta: torch.Tensor, padding: str) -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)
