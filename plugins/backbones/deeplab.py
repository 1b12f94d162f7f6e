"""Segmentation networks as SegNets: DeepLabv2 on a timm ResNet (``--backbone deeplabv2``) and any
segmentation_models_pytorch model (``--backbone smp:DeepLabV3Plus:resnet50,bn=frozen``).

Both expect images in [-1, 1] RGB and convert them inside the network to the ImageNet mean/std
normalisation that ImageNet-trained timm / smp encoders were trained with (a fixed affine with no
parameters, ``Normalize``), so a local ImageNet state dict given with ``--pretrained`` sees the
inputs it expects. Without ``--pretrained`` the weights are random; ``--pretrained imagenet``
takes timm's ImageNet weights (downloaded once by timm where the machine is online).
``deeplabv2:resnet101,style=caffe`` is the authors' Caffe-converted ResNet instead, for the DeepLab
initialisation file that AdaptSegNet and ADVENT start from.
"""
from __future__ import annotations

import difflib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dabench.errors import DabenchError
from dabench.nets import IMAGENET, SegNet, load_weights, read_state_dict, timm_model
from dabench.registry import plugin

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
BN_MODES = {
    "affine": "affine parameters frozen, batch statistics in training (the authors' code)",
    "frozen": "affine parameters frozen and running statistics always (eval mode even in training)",
    "train": "ordinary batch norm, everything trained",
}
ASPP_RATES = (6, 12, 18, 24)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)  # AdaptSegNet's / ADVENT's IMG_MEAN, 0-255
STYLES = ("timm", "caffe")


class Normalize(nn.Module):
    """[-1, 1] inputs -> ImageNet-normalised ones: ``((x + 1) / 2 - mean) / std`` as one fixed
    per-channel affine. Buffers, not parameters, and not saved in the state dict."""

    def __init__(self, channels: int = 3, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        mean, std = torch.tensor(mean), torch.tensor(std)
        if channels != len(mean):  # e.g. grey images: the channel average, as timm does
            mean, std = mean.mean().repeat(channels), std.mean().repeat(channels)
        self.register_buffer("scale", (0.5 / std).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", ((0.5 - mean) / std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)


class CaffeNormalize(nn.Module):
    """[-1, 1] RGB inputs -> what the Caffe-converted DeepLab ResNet was trained on: BGR, 0-255,
    the DeepLab mean subtracted, no division by a std (AdaptSegNet's and ADVENT's preprocessing)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flip(1) + 1) * 127.5 - self.mean.to(x.dtype)


class ASPP(nn.Module):
    """DeepLabv2's classifier (Chen et al., TPAMI 2017): parallel 3x3 convolutions with dilation
    6, 12, 18 and 24 straight to class scores, SUMMED. All four: AdaptSegNet's released code returns
    inside the loop and sums only the first two (its issues #4, #20); ADVENT and FDA fixed that.
    Weights N(0, 0.01), biases 0, as in the authors' code."""

    def __init__(self, in_channels: int, num_classes: int, rates: tuple[int, ...] = ASPP_RATES):
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates)
        for conv in self.branches:
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class ResNetEncoder(nn.Module):
    """A timm ResNet at output stride 8, returning (layer3, layer4) feature maps."""

    def __init__(self, body: nn.Module, in_channels: int = 3, normalize: nn.Module | None = None):
        super().__init__()
        self.normalize, self.body = normalize or Normalize(in_channels), body

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = self.body(self.normalize(x))
        return low, high


class BatchNormModes(SegNet):
    """A SegNet whose batch-norm layers follow ``bn``, a key of ``BN_MODES``: ``affine`` and
    ``frozen`` take the scale and shift out of training; ``frozen`` also keeps every batch norm
    in eval mode (running statistics) whatever ``train()`` is asked."""

    def __init__(self, encoder: nn.Module, head: nn.Module, aux_head: nn.Module | None = None, bn: str = "train"):
        super().__init__(encoder, head, aux_head)
        self.bn = bn
        if bn != "train":
            for norm in self.batchnorms():
                norm.requires_grad_(False)
        self.train()

    def batchnorms(self) -> list[nn.modules.batchnorm._BatchNorm]:
        return [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def train(self, mode: bool = True) -> "BatchNormModes":
        super().train(mode)
        if self.bn == "frozen":
            for norm in self.batchnorms():
                norm.eval()
        return self


class DeepLabV2(BatchNormModes):
    """DeepLabv2: ``encoder`` a ResNet at stride 8, ``head`` / ``aux_head`` ASPP on layer4 / layer3."""


def _bn_mode(value: str, name: str) -> str:
    if value not in BN_MODES:
        modes = "; ".join(f"{k}: {v}" for k, v in BN_MODES.items())
        raise DabenchError(f"{name}: unknown bn mode '{value}'. Expected one of: {modes}.")
    return value


def _options(arg: str | None, default_encoder: str) -> tuple[str, str, str]:
    """``resnet50,bn=frozen,style=caffe`` -> ("resnet50", "frozen", "caffe"); order free, all optional."""
    usage = "Write e.g. --backbone deeplabv2:resnet50,bn=frozen."
    encoder, bn, style, named = default_encoder, "affine", "timm", set()
    for token in (t.strip() for t in (arg or "").split(",")):
        if not token:
            continue
        key, sep, value = token.partition("=")
        key, value = (key.strip(), value.strip()) if sep else ("encoder", key)
        if key in named:
            raise DabenchError(f"deeplabv2: '{key}' given twice in 'deeplabv2:{arg}'. {usage}")
        named.add(key)
        if key == "encoder":
            if value not in RESNETS:
                raise DabenchError(f"deeplabv2: unknown encoder '{value}'. Expected one of {', '.join(RESNETS)}. {usage}")
            encoder = value
        elif key == "bn":
            bn = _bn_mode(value, "deeplabv2")
        elif key == "style" and value in STYLES:
            style = value
        else:
            raise DabenchError(f"deeplabv2: unknown option '{token}' in 'deeplabv2:{arg}'. Valid options: "
                               f"encoder (a name alone, one of {', '.join(RESNETS)}), bn ({', '.join(BN_MODES)}) and "
                               f"style ({', '.join(STYLES)}). {usage}")
    return encoder, bn, style


def _need_classes(name: str, num_classes: int | None) -> int:
    if not num_classes or num_classes < 1:
        raise DabenchError(f"The {name} backbone builds its own classifier and needs num_classes (a positive "
                           f"integer), got {num_classes!r}. The runner passes the data set's class count.")
    return num_classes


def _load(net: nn.Module, encoder: nn.Module, path: str | Path, state: dict | None = None) -> None:
    """``--pretrained``: a whole-network state dict (a dabench checkpoint of this backbone), else an
    encoder-only one (a timm / torchvision state dict of the same encoder)."""
    state = read_state_dict(path) if state is None else state
    try:
        load_weights(net, path, state)
    except DabenchError as whole:
        try:
            load_weights(encoder, path, state)
        except DabenchError:
            example = next(iter(encoder.state_dict()))
            raise DabenchError(f"{whole} Nor does it fit the encoder alone (keys like '{example}', as in a timm "
                               "state dict of the same model).") from None


def deeplab_init(state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """The DeepLab initialisation file that the AdaptSegNet and ADVENT code start from
    (``DeepLab_resnet_pretrained_init-f81d91e8.pth``), keyed for this network: ``Scale.<resnet key>``
    -> ``encoder.body.<resnet key>``, and the ASPP classifier ``Scale.layer5.conv2d_list.{i}`` ->
    ``head.branches.{i}`` when its class count fits, else dropped, as the reference script drops it.
    A key this network lacks, or a tensor of another shape, is refused, naming the first one."""
    own, out = net.state_dict(), {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] != "Scale":
            raise DabenchError(f"--pretrained: '{key}' in a DeepLab initialisation file: every key should start with "
                               "'Scale.' (the file AdaptSegNet and ADVENT start from).")
        if parts[1] == "layer5":  # Scale.layer5.conv2d_list.{i}.{weight,bias}
            target = f"head.branches.{parts[3]}.{parts[4]}"
            if target in own and own[target].shape != value.shape:
                continue  # another class count: the classifier is not used
        else:
            target = "encoder.body." + ".".join(parts[1:])
        if target not in own:
            raise DabenchError(f"--pretrained: '{key}' of the DeepLab initialisation file has no place in this network "
                               f"(looked for '{target}'). Is it a ResNet-101 file for --backbone deeplabv2:resnet101,style=caffe?")
        if own[target].shape != value.shape:
            raise DabenchError(f"--pretrained: '{key}' has shape {tuple(value.shape)} but this network's '{target}' has "
                               f"{tuple(own[target].shape)}. Use the encoder the file was made for (resnet101).")
        out[target] = value
    return out


def _caffe_resnet(body: nn.Module) -> None:
    """The authors' Caffe ResNet, where it differs from timm's at output stride 8: the stride-2 block of
    layer2 strides in its first 1x1 convolution, not the 3x3; the stem's max-pool rounds up."""
    block = body.layer2[0]
    if hasattr(block, "conv3"):  # a bottleneck (resnet50 and up); basic blocks stride in their first conv already
        block.conv1.stride, block.conv2.stride = (2, 2), (1, 1)
    body.maxpool.ceil_mode = True


@plugin("deeplabv2", task="segmentation", description="DeepLabv2 (ASPP 6/12/18/24, aux head on layer3, stride 8) on a ResNet, e.g. "
                                         "deeplabv2:resnet50,bn=frozen (random init unless --pretrained PATH|imagenet)")
def deeplabv2(arg: str | None = None, *, in_channels: int = 3, image_size=None, pretrained: str | None = None,
              num_classes: int | None = None) -> DeepLabV2:
    """DeepLabv2 as AdaptSegNet uses it (Chen et al., TPAMI 2017; Tsai et al., CVPR 2018): a ResNet
    (default resnet101) with layer3 dilated by 2 and layer4 by 4, output stride 8; the main ASPP
    classifier on layer4 and an auxiliary one on layer3 (for multi-level methods).

    Every 3x3 convolution of layer3 / layer4 gets the stage's dilation, the first block's too, as in
    the authors' Caffe-style ResNet (timm and torchvision keep the previous dilation there).

    ``style``: ``timm`` (default) is timm's ResNet (stride in the 3x3 convolution) behind ImageNet
    mean/std normalisation; it takes timm's ImageNet weights (``--pretrained imagenet``) or a timm
    state dict (``--pretrained PATH``, also a whole-network one). ``caffe`` is the authors' ResNet
    (stride in the 1x1 convolution, max-pool rounding up) behind their preprocessing (BGR, 0-255,
    mean subtracted): it takes the DeepLab initialisation file the AdaptSegNet and ADVENT code start
    from (``--pretrained DeepLab_resnet_pretrained_init-f81d91e8.pth``). Without ``--pretrained``
    the weights are random.

    ``bn``: ``affine`` (default) freezes the batch-norm scale and shift but uses batch statistics
    in training, as the authors' code does; ``frozen`` also keeps running statistics (the usual
    choice with a pretrained encoder at batch size 1); ``train`` trains everything.
    ``image_size`` is not needed (fully convolutional) and ignored.
    """
    encoder_name, bn, style = _options(arg, "resnet101")
    num_classes = _need_classes("deeplabv2", num_classes)
    if style == "caffe" and (pretrained == IMAGENET or in_channels != 3):
        raise DabenchError("deeplabv2 style=caffe is the authors' Caffe ResNet for RGB images; timm's ImageNet "
                           "weights fit style=timm. Use --backbone deeplabv2:resnet101 with --pretrained imagenet, or "
                           "style=caffe with --pretrained PATH of the DeepLab initialisation file.")
    body = timm_model(encoder_name, pretrained if style == "timm" else None, in_chans=in_channels,
                      features_only=True, output_stride=8, out_indices=(3, 4))
    if style == "caffe":
        _caffe_resnet(body)
    for stage, dilation in (("layer3", 2), ("layer4", 4)):
        for conv in getattr(body, stage).modules():
            if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
                conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)
    low, high = body.feature_info.channels()
    encoder = ResNetEncoder(body, in_channels, CaffeNormalize() if style == "caffe" else None)
    net = DeepLabV2(encoder, ASPP(high, num_classes), ASPP(low, num_classes), bn)
    if pretrained and pretrained != IMAGENET:
        state = read_state_dict(pretrained)
        if any(k.startswith("Scale.") for k in state):
            if style != "caffe":
                raise DabenchError(f"--pretrained: {pretrained} is the Caffe-converted DeepLab initialisation (keys "
                                   "'Scale.*'); it fits the authors' ResNet: --backbone deeplabv2:resnet101,style=caffe.")
            net.load_state_dict(deeplab_init(state, net), strict=False)
        else:
            _load(net, body, pretrained, state)
    return net


# segmentation_models_pytorch ----------------------------------------------------------------


class SmpEncoder(nn.Module):
    """An smp encoder behind ``Normalize``; ``features(x)`` is smp's list of stages, ``forward``
    the SegNet contract's two deepest maps."""

    def __init__(self, encoder: nn.Module, in_channels: int = 3):
        super().__init__()
        self.normalize, self.body = Normalize(in_channels), encoder

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(self.normalize(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        return feats[-2], feats[-1]


class SmpDecoder(nn.Module):
    """smp's decoder and segmentation head: the list of encoder stages -> logits."""

    def __init__(self, decoder: nn.Module, segmentation_head: nn.Module):
        super().__init__()
        self.decoder, self.segmentation_head = decoder, segmentation_head

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.segmentation_head(self.decoder(features))


class SmpSegNet(BatchNormModes):
    """An smp model as a SegNet: ``forward(x)`` -> (logits at the input resolution, None).

    Inputs whose sides are not multiples of the encoder's output stride (1280x720 at stride 32) are
    zero-padded at the bottom and right and the logits cropped back, instead of smp's error."""

    def __init__(self, model: nn.Module, in_channels: int = 3, bn: str = "train", name: str = "smp"):
        super().__init__(SmpEncoder(model.encoder, in_channels), SmpDecoder(model.decoder, model.segmentation_head),
                         bn=bn)
        self.stride, self.name = int(getattr(model.encoder, "output_stride", 32)), name

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.stride, -w % self.stride
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        try:
            logits = self.head(self.encoder.features(x))
        except ValueError as exc:
            if "more than 1 value per channel" not in str(exc):
                raise
            raise DabenchError(
                f"{self.name} normalises globally pooled features with batch norm, which cannot train on one "
                f"image per batch. Use {self.name},bn=frozen (running statistics), a batch size of 2 or more "
                "(--hparam batch_size=2), or an architecture without image pooling (Unet, FPN, PSPNet).") from None
        return logits[..., :h, :w], None


def _smp_names() -> tuple[dict[str, str], list[str]]:
    """{lower-case name: class name} of smp's architectures, and its encoder names."""
    import segmentation_models_pytorch as smp

    archs = {k: v.__name__ for k, v in smp.MODEL_ARCHITECTURES_MAPPING.items()}
    return archs, list(smp.encoders.get_encoder_names())


def _check_smp(arg: str | None) -> tuple[str, str, str]:
    """``DeepLabV3Plus:resnet50[,bn=MODE]`` -> (class name, encoder name, bn mode), or a DabenchError."""
    archs, encoders = _smp_names()
    usage = (f"Write --backbone smp:ARCH:ENCODER[,bn=MODE], e.g. smp:DeepLabV3Plus:resnet50. Architectures: "
             f"{', '.join(archs.values())}.")
    arch, _, rest = (arg or "").partition(":")
    encoder, *options = [t.strip() for t in rest.split(",")]
    arch = arch.strip()
    if not arch or not encoder:
        raise DabenchError(f"smp needs an architecture and an encoder, got 'smp:{arg or ''}'. {usage}")
    if arch.lower() not in archs:
        close = difflib.get_close_matches(arch, list(archs.values()), n=2, cutoff=0.5)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise DabenchError(f"smp has no architecture '{arch}'.{hint} {usage}")
    if encoder.startswith("tu-"):
        import timm

        if encoder[3:] not in timm.list_models():
            raise DabenchError(f"smp encoder '{encoder}': 'tu-' encoders name a timm model, and timm has no "
                               f"'{encoder[3:]}' (see timm.list_models()).")
    elif encoder not in encoders:
        close = difflib.get_close_matches(encoder, encoders, n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise DabenchError(f"smp has no encoder '{encoder}'.{hint} Some it has: {', '.join(encoders[:12])}, ... "
                           "(all: segmentation_models_pytorch.encoders.get_encoder_names()), or any timm model as "
                           "'tu-NAME'.")
    bn = "train"
    for option in filter(None, options):
        key, sep, value = option.partition("=")
        if key.strip() != "bn" or not sep:
            raise DabenchError(f"smp: unknown option '{option}' in 'smp:{arg}'. The only option is bn "
                               f"({', '.join(BN_MODES)}), e.g. smp:DeepLabV3Plus:resnet50,bn=frozen.")
        bn = _bn_mode(value.strip(), "smp")
    return archs[arch.lower()], encoder, bn


@plugin("smp", task="segmentation", description="any segmentation_models_pytorch model, e.g. smp:Unet:resnet34 or "
                                         "smp:DeepLabV3Plus:resnet50,bn=frozen (random init unless --pretrained PATH)")
def smp_model(arg: str | None = None, *, in_channels: int = 3, image_size=None, pretrained: str | None = None,
              num_classes: int | None = None) -> SmpSegNet:
    """``smp:ARCH:ENCODER``: ``segmentation_models_pytorch.create_model(ARCH, encoder_name=ENCODER,
    encoder_weights=None)``. The encoder trains at the base learning rate, decoder and head at the
    head multiplier (10x). No auxiliary head. ``,bn=MODE`` as for deeplabv2, default ``train``;
    architectures with image pooling (DeepLabV3, DeepLabV3Plus, PAN, UPerNet) need ``bn=frozen``
    or a batch of 2 or more to train. Weights are random unless ``--pretrained PATH`` names
    a local state dict of the whole network or of the smp encoder alone; nothing is downloaded.
    ``image_size`` is ignored: inputs of any size are padded to the encoder's stride."""
    import segmentation_models_pytorch as smp

    arch, encoder, bn = _check_smp(arg)
    num_classes = _need_classes("smp", num_classes)
    try:
        model = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, in_channels=in_channels,
                                 classes=num_classes)
    except (KeyError, ValueError, RuntimeError, AttributeError) as exc:
        raise DabenchError(f"smp could not build {arch} with encoder '{encoder}': {exc}. Not every encoder "
                           "fits every architecture: try another (resnet50 fits all but DPT).") from None
    net = SmpSegNet(model, in_channels, bn, name=f"smp:{arch}:{encoder}")
    if pretrained:
        _load(net, model.encoder, pretrained)
    return net
