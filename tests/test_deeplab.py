"""The segmentation backbones: DeepLabv2 (stride 8, four summed ASPP branches, batch-norm modes,
local weights) and the smp wrapper. Small inputs and resnet18 keep this fast on a CPU."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dabench.errors import DabenchError
from dabench.nets import SegNet
from dabench.registry import backbones

K = 5  # classes


def deeplab(arg: str = "resnet18", **kw) -> SegNet:
    torch.manual_seed(0)
    return backbones.get("deeplabv2")(arg, num_classes=K, **kw)


def smp(arg: str, **kw) -> SegNet:
    torch.manual_seed(0)
    return backbones.get("smp")(arg, num_classes=K, **kw)


def batchnorms(net: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_both_factories_are_segmentation_backbones():
    assert backbones.get("deeplabv2").task == "segmentation"
    assert backbones.get("smp").task == "segmentation"


def test_main_and_aux_logits_are_at_output_stride_8():
    net = deeplab()
    main, aux = net(torch.randn(1, 3, 64, 96))
    assert net.has_aux
    assert main.shape == aux.shape == (1, K, 8, 12)


def test_layer3_is_dilated_by_2_and_layer4_by_4_in_every_block():
    body = deeplab().encoder.body
    for stage, rate in (("layer3", 2), ("layer4", 4)):
        convs = [m for m in getattr(body, stage).modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
        assert convs and all(c.dilation == (rate, rate) and c.padding == (rate, rate) and c.stride == (1, 1)
                             for c in convs)


def test_default_is_resnet101_with_the_authors_batch_norm():
    with torch.device("meta"):  # shapes only: no memory, no time
        net = backbones.get("deeplabv2")(None, num_classes=K)
    assert len(net.encoder.body.layer3) == 23 and net.head.branches[0].in_channels == 2048
    assert net.aux_head.branches[0].in_channels == 1024 and net.bn == "affine"


def test_aspp_has_rates_6_12_18_24_and_sums_all_four_branches():
    head = deeplab().head
    assert [b.dilation for b in head.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert [b.padding for b in head.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    feats = torch.randn(1, head.branches[0].in_channels, 30, 30)
    with torch.no_grad():
        parts = [b(feats) for b in head.branches]
        torch.testing.assert_close(head(feats), parts[0] + parts[1] + parts[2] + parts[3])
        full = head(feats)
        for b in head.branches[1:]:
            b.weight.zero_()
            b.bias.zero_()
        # zeroing three branches removes exactly their contribution, the two late ones included
        torch.testing.assert_close(full - head(feats), parts[1] + parts[2] + parts[3])
        torch.testing.assert_close(head(feats), parts[0])


def test_aspp_weights_are_normal_0_01_and_biases_zero():
    head = deeplab().head
    w = torch.cat([b.weight.flatten() for b in head.branches])
    assert abs(w.std().item() - 0.01) < 0.0005 and abs(w.mean().item()) < 0.0005
    assert all(torch.all(b.bias == 0) for b in head.branches)


def test_inputs_in_minus_one_one_are_imagenet_normalised_without_parameters():
    norm = deeplab().encoder.normalize
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = torch.rand(1, 3, 4, 4) * 2 - 1
    torch.testing.assert_close(norm(x), ((x + 1) / 2 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    assert not list(norm.parameters()) and not norm.state_dict()


def test_bn_affine_freezes_scale_and_shift_but_uses_and_updates_batch_statistics():
    net = deeplab("resnet18,bn=affine").train()
    norms = batchnorms(net)
    assert all(m.training and not m.weight.requires_grad and not m.bias.requires_grad for m in norms)
    before = norms[0].running_mean.clone()
    net(torch.randn(1, 3, 64, 64))
    assert not torch.equal(before, norms[0].running_mean)


def test_bn_frozen_stays_in_eval_mode_when_trained_and_keeps_its_statistics():
    net = deeplab("bn=frozen,resnet18")
    wrapper = nn.ModuleDict({"segmenter": net}).train()  # as an Algorithm's train() reaches it
    norms = batchnorms(wrapper)
    assert net.training and all(not m.training and not m.weight.requires_grad for m in norms)
    stats = [m.running_mean.clone() for m in norms]
    net(torch.randn(1, 3, 64, 64))
    assert all(torch.equal(s, m.running_mean) for s, m in zip(stats, norms))


def test_bn_train_trains_everything():
    net = deeplab("resnet18,bn=train").train()
    assert all(m.training and m.weight.requires_grad for m in batchnorms(net))


@pytest.mark.parametrize("bn", ["affine", "train"])
def test_param_groups_give_heads_10x_and_leave_frozen_parameters_out(bn):
    net = deeplab(f"resnet18,bn={bn}")
    encoder, heads = net.param_groups(head_lr_mult=10)
    assert (encoder["lr_mult"], heads["lr_mult"]) == (1.0, 10.0)
    assert {id(p) for p in heads["params"]} == {id(p) for p in [*net.head.parameters(), *net.aux_head.parameters()]}
    assert len(heads["params"]) == 16  # 2 heads x 4 branches x (weight, bias)
    in_groups = {id(p) for p in encoder["params"] + heads["params"]}
    assert in_groups == {id(p) for p in net.parameters() if p.requires_grad}
    bn_params = {id(p) for m in batchnorms(net) for p in m.parameters()}
    assert bool(bn_params & in_groups) == (bn == "train")


def test_pretrained_whole_network_round_trip(tmp_path):
    a = deeplab().eval()
    path = tmp_path / "deeplab.pt"
    torch.save(a.state_dict(), path)
    torch.manual_seed(1)
    b = backbones.get("deeplabv2")("resnet18", num_classes=K, pretrained=str(path)).eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        for u, v in zip(a(x), b(x)):
            torch.testing.assert_close(u, v)


def test_pretrained_encoder_only_state_dict_loads_into_the_resnet(tmp_path):
    import timm

    resnet = timm.create_model("resnet18", pretrained=False)  # the layout of a timm ImageNet checkpoint
    path = tmp_path / "resnet18.pt"
    torch.save(resnet.state_dict(), path)
    net = deeplab(pretrained=str(path))
    torch.testing.assert_close(net.encoder.body.conv1.weight, resnet.conv1.weight)
    torch.testing.assert_close(net.encoder.body.layer4[1].bn2.running_var, resnet.layer4[1].bn2.running_var)


def test_pretrained_file_that_fits_nothing_is_an_error(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(DabenchError, match="encoder alone"):
        deeplab(pretrained=str(path))
    with pytest.raises(DabenchError, match="no file"):
        deeplab(pretrained=str(tmp_path / "missing.pt"))


def test_deeplab_needs_the_number_of_classes():
    with pytest.raises(DabenchError, match="needs num_classes"):
        backbones.get("deeplabv2")("resnet18")


def test_smp_returns_logits_at_input_size_for_any_input_size():
    net = smp("Unet:resnet18")
    main, aux = net(torch.randn(1, 3, 40, 70))  # not multiples of 32
    assert main.shape == (1, K, 40, 70) and aux is None and not net.has_aux


def test_smp_param_groups_encoder_1x_decoder_and_head_10x():
    net = smp("FPN:resnet18")
    encoder, heads = net.param_groups(head_lr_mult=10)
    assert (encoder["lr_mult"], heads["lr_mult"]) == (1.0, 10.0)
    assert {id(p) for p in encoder["params"]} == {id(p) for p in net.encoder.body.parameters()}
    assert {id(p) for p in heads["params"]} == {id(p) for p in net.head.parameters()}
    assert len(encoder["params"]) + len(heads["params"]) == len(list(net.parameters()))


def test_smp_image_pooling_at_batch_1_needs_frozen_batch_norm():
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(DabenchError, match="bn=frozen"):
        smp("DeepLabV3Plus:resnet18").train()(x)
    assert smp("DeepLabV3Plus:resnet18,bn=frozen").train()(x)[0].shape == (1, K, 32, 32)


def test_smp_pretrained_round_trip(tmp_path):
    a = smp("Unet:resnet18").eval()
    path = tmp_path / "unet.pt"
    torch.save(a.state_dict(), path)
    b = backbones.get("smp")("Unet:resnet18", num_classes=K, pretrained=str(path)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x)[0], b(x)[0])


@pytest.mark.parametrize("name, arg, message", [
    ("deeplabv2", "resnet77", "unknown encoder 'resnet77'.*resnet18, resnet34, resnet50, resnet101"),
    ("deeplabv2", "resnet18,bn=sync", "unknown bn mode 'sync'.*affine.*frozen.*train"),
    ("deeplabv2", "resnet18,stride=16", "unknown option 'stride=16'.*Valid options: encoder.*bn.*style"),
    ("deeplabv2", "resnet18,resnet50", "'encoder' given twice"),
    ("smp", None, "needs an architecture and an encoder"),
    ("smp", "Unet", "needs an architecture and an encoder"),
    ("smp", "DeepLabV2:resnet18", "no architecture 'DeepLabV2'.*DeepLabV3Plus"),
    ("smp", "Unet:resnet19", "no encoder 'resnet19'.*resnet18"),
    ("smp", "Unet:tu-nonexistent_net", "timm has no 'nonexistent_net'"),
    ("smp", "Unet:resnet18,depth=3", "unknown option 'depth=3'"),
    ("smp", "Unet:resnet18,bn=sync", "unknown bn mode 'sync'"),
    ("smp", "DPT:resnet18", "could not build DPT"),
])
def test_bad_backbone_arguments_say_what_is_valid(name, arg, message):
    with pytest.raises(DabenchError, match=message):
        backbones.get(name)(arg, num_classes=K)


def test_smp_architecture_names_are_case_insensitive():
    assert smp("deeplabv3plus:resnet18,bn=frozen")(torch.randn(1, 3, 32, 32))[0].shape == (1, K, 32, 32)


# The authors' DeepLab initialisation (style=caffe) and timm's ImageNet weights ---------------------

def deeplab_init_layout(net: SegNet, classes: int) -> dict[str, torch.Tensor]:
    """A state dict in the layout of DeepLab_resnet_pretrained_init-f81d91e8.pth, made from ``net``:
    ResNet keys under 'Scale.', the ASPP classifier as 'Scale.layer5.conv2d_list.{0..3}'."""
    torch.manual_seed(5)
    state = {"Scale." + k[len("encoder.body."):]: torch.randn_like(v) if v.is_floating_point() else v
             for k, v in net.state_dict().items() if k.startswith("encoder.body.") and "num_batches" not in k}
    width = net.head.branches[0].in_channels
    for i in range(4):
        state[f"Scale.layer5.conv2d_list.{i}.weight"] = torch.randn(classes, width, 3, 3)
        state[f"Scale.layer5.conv2d_list.{i}.bias"] = torch.randn(classes)
    return state


@pytest.mark.parametrize("classes", [K, 21], ids=["classifier fits", "other class count: classifier dropped"])
def test_the_deeplab_initialisation_file_loads_into_the_caffe_resnet(tmp_path, classes):
    layout = deeplab_init_layout(deeplab("resnet18,style=caffe"), classes)
    torch.save(layout, tmp_path / "init.pth")
    net = deeplab("resnet18,style=caffe", pretrained=str(tmp_path / "init.pth"))
    own = net.state_dict()
    assert torch.equal(own["encoder.body.conv1.weight"], layout["Scale.conv1.weight"])
    assert torch.equal(own["encoder.body.layer4.1.bn2.running_var"], layout["Scale.layer4.1.bn2.running_var"])
    fitted = torch.equal(own["head.branches.3.weight"], layout["Scale.layer5.conv2d_list.3.weight"])
    assert fitted == (classes == K)


def test_a_deeplab_initialisation_file_that_does_not_fit_names_the_first_mismatching_key(tmp_path):
    layout = deeplab_init_layout(deeplab("resnet18,style=caffe"), K)
    layout["Scale.layer1.0.conv1.weight"] = torch.randn(64, 64, 5, 5)
    torch.save(layout, tmp_path / "init.pth")
    with pytest.raises(DabenchError, match=r"'Scale.layer1.0.conv1.weight' has shape \(64, 64, 5, 5\)"):
        deeplab("resnet18,style=caffe", pretrained=str(tmp_path / "init.pth"))
    with pytest.raises(DabenchError, match="style=caffe"):
        deeplab("resnet18", pretrained=str(tmp_path / "init.pth"))  # the timm ResNet: refused


def test_caffe_style_is_the_authors_resnet_and_preprocessing():
    net = deeplab("resnet50,style=caffe")
    block = net.encoder.body.layer2[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1) and net.encoder.body.maxpool.ceil_mode
    main, aux = net(torch.zeros(1, 3, 64, 64))
    assert main.shape[-2:] == aux.shape[-2:] == (9, 9)  # stride 8, the max-pool rounding up: 32 -> 17, not 16 (timm: 8x8)
    # BGR, 0-255, the DeepLab mean subtracted: black is -mean; pure red lands in the last channel
    x = torch.tensor([-1.0, -1.0, -1.0]).view(1, 3, 1, 1)
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)
    mean = torch.tensor([104.00698793, 116.66876762, 122.67891434])
    assert torch.allclose(net.encoder.normalize(x).flatten(), -mean)
    assert torch.allclose(net.encoder.normalize(red).flatten(), torch.tensor([0.0, 0.0, 255.0]) - mean)


def test_pretrained_imagenet_offline_names_the_cache_and_the_local_file_way(monkeypatch, tmp_path):
    import timm
    from click.testing import CliRunner

    from dabench.cli import main

    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(DabenchError, match=rf"resnet18.*couldn't connect.*{tmp_path / 'hub'}.*--pretrained PATH"):
        deeplab("resnet18", pretrained="imagenet")
    r = CliRunner().invoke(main, ["run", "--algo", "erm", "--src", "toy-src", "--tgt", "toy-tgt", "--backbone",
                                  "timm:resnet18", "--pretrained", "imagenet", "--out", str(tmp_path / "runs")])
    assert r.exit_code == 2 and "--pretrained imagenet" in r.output and "Traceback" not in r.output
    with pytest.raises(DabenchError, match="style=timm"):
        deeplab("resnet18,style=caffe", pretrained="imagenet")
