"""AdaptSegNet (multi- and single-level), AdvEnt, MinEnt and FDA against transcriptions of their
authors' training iterations (tests/reference/adaptsegnet.py, advent.py, minent.py, fda.py): the
same weights (the plugin's networks copied), the same batches, the same random state; losses and
every parameter after every step agree to 1e-5 relative. The learning rate is raised to 5e-3 on
both sides so that 20 steps move the weights well past that tolerance; the defaults are compared
with the authors' constants separately, and the schedules over whole runs of the authors' length.

The tiny segmenter is conftest's toy-segnet (batch norm in its encoder, an auxiliary head); source
images 32 x 64 with labels (some 255), target images 32 x 48 (FDA pairs equal sizes, as the
authors crop them)."""
from __future__ import annotations

import pytest
import torch

from dabench.data import Batch
from dabench.hparams import defaults
from dabench.registry import algorithms, backbones
from reference import adaptsegnet as asn
from reference import advent as adv
from reference import fda as fda_ref
from reference import minent as ment
from reference.harness import assert_losses_match, assert_params_match, run_side_by_side, twin
pytestmark = pytest.mark.usefixtures("one_thread")

K, STEPS, LR = 3, 20, 5e-3


def build(name: str, steps: int = STEPS, **hp):
    cls = algorithms.get(name)
    torch.manual_seed(0)
    net = backbones.get("toy-segnet")(num_classes=K)
    return cls(net, K, defaults(cls.space("segmentation")) | hp, steps)


def seg_batches(steps: int = STEPS, batch: int = 1, tgt_size=(32, 48), seed: int = 0) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        src = torch.rand(batch, 3, 32, 64, generator=g) * 2 - 1
        y = torch.randint(0, K, (batch, 32, 64), generator=g)
        y[:, :4] = 255  # an ignored band, as GTA5's unlabelled pixels
        tgt = (torch.rand(batch, 3, *tgt_size, generator=g) * 2 - 1) * 0.7 + 0.2
        out.append(Batch(src, y, tgt))
    return out


def fc_discriminator(seq: torch.nn.Sequential) -> asn.FCDiscriminator:
    """AdaptSegNet's FCDiscriminator holding the weights of the plugin's discriminator."""
    d = asn.FCDiscriminator(K)
    names = ["conv1", "conv2", "conv3", "conv4", "classifier"]
    convs = [m for m in seq if isinstance(m, torch.nn.Conv2d)]
    d.load_state_dict({f"{n}.{k}": v.clone() for n, c in zip(names, convs) for k, v in c.state_dict().items()})
    return d


def segmenter_params(side, aux: bool = True):
    net = side.segmenter if hasattr(side, "segmenter") else side.model
    return [p for n, p in net.named_parameters() if aux or not n.startswith("aux_head")]


def check(step: int, nets: tuple, discs: tuple) -> None:
    """The segmenters after every step; the discriminators (2.8M weights each, slow to compare)
    after every fifth and the last."""
    assert_params_match(*nets, what=f"segmenter after step {step}")
    if step % 5 == 4 or step == STEPS - 1:
        assert_params_match(*discs, what=f"discriminators after step {step}")


@pytest.mark.parametrize("name", ["adaptsegnet", "adaptsegnet-single"])
def test_adaptsegnet_matches_the_authors_iteration_step_for_step(name):
    multi = name == "adaptsegnet"
    algo = build(name, lr=LR)
    torch.manual_seed(1)
    d1 = fc_discriminator(algo.discriminators["aux"]) if multi else asn.FCDiscriminator(K)
    d2 = fc_discriminator(algo.discriminators["main"])
    # the README's single-level run: lambda_seg 0, lambda_adv_target1 0
    args = asn.Args(learning_rate=LR, num_steps=33, num_steps_stop=STEPS,
                    **({} if multi else {"lambda_seg": 0.0, "lambda_adv_target1": 0.0}))
    tr = asn.Trainer(twin(algo.segmenter), d1, d2, args)
    # single-level: the authors' auxiliary head and discriminator D1 train to no effect on the main output
    nets = (segmenter_params(algo, multi), segmenter_params(tr, multi))
    discs = (list(algo.discriminators["main"].parameters()), list(tr.model_D2.parameters()))
    if multi:
        discs = (discs[0] + list(algo.discriminators["aux"].parameters()), discs[1] + list(tr.model_D1.parameters()))

    def reference_step(i, b):
        out = tr.step(i, b.src_x, b.src_y, b.tgt_x)
        check(i, nets, discs)
        return out

    logs = run_side_by_side(lambda i, b: algo.update(b, i), reference_step, seg_batches())
    for a, b in logs:
        b["disc"] = b["loss_D2"] + (b["loss_D1"] if multi else 0.0)
    assert_losses_match(logs, {"seg": "loss_seg", "adv": "loss_adv", "disc": "disc"})


def test_advent_matches_the_authors_iteration_step_for_step():
    algo = build("advent", lr=LR)
    d_aux, d_main = adv.get_fc_discriminator(K), adv.get_fc_discriminator(K)  # the authors' layers, the plugin's weights
    d_aux.load_state_dict(algo.discriminators["aux"].state_dict())
    d_main.load_state_dict(algo.discriminators["main"].state_dict())
    tr = adv.AdvEntTrainer(twin(algo.segmenter), d_aux, d_main, adv.TrainConfig(LEARNING_RATE=LR, MAX_ITERS=42,
                                                                                 EARLY_STOP=STEPS))
    nets = (list(algo.segmenter.parameters()), list(tr.model.parameters()))
    discs = (list(algo.discriminators.parameters()), list(tr.d_main.parameters()) + list(tr.d_aux.parameters()))

    def reference_step(i, b):
        out = tr.step(i, b.src_x, b.src_y, b.tgt_x)
        check(i, nets, discs)
        return out

    logs = run_side_by_side(lambda i, b: algo.update(b, i), reference_step, seg_batches())
    assert_losses_match(logs, {"seg": "loss_seg", "adv": "loss_adv", "disc": "loss_d"})


def test_minent_matches_the_authors_iteration_step_for_step():
    algo = build("minent", lr=LR)
    tr = ment.MinEntTrainer(twin(algo.segmenter), adv.TrainConfig(LEARNING_RATE=LR, MAX_ITERS=42, EARLY_STOP=STEPS))

    def reference_step(i, b):
        out = tr.step(i, b.src_x, b.src_y, b.tgt_x)
        assert_params_match(algo.segmenter.parameters(), tr.model.parameters(), what=f"after step {i}")
        return out

    logs = run_side_by_side(lambda i, b: algo.update(b, i), reference_step, seg_batches())
    assert_losses_match(logs, {"seg": "loss_seg", "ent": "loss_ent_main"})


def test_fda_matches_the_authors_iteration_step_for_step():
    """beta 0.1 (train.py's default LB; b = 3 on 32-px-high images); the entropy switches on after
    step 10 of 20 (switch2entropy), inside the run."""
    algo = build("fda", lr=LR, beta=0.1)
    tr = fda_ref.Trainer(twin(algo.segmenter), fda_ref.Args(learning_rate=LR, num_steps=30, num_steps_stop=STEPS,
                                                            switch2entropy=10))

    def reference_step(i, b):
        out = tr.step(i, b.src_x, b.src_y, b.tgt_x)
        assert_params_match(algo.segmenter.parameters(), tr.model.parameters(), what=f"after step {i}")
        return out

    logs = run_side_by_side(lambda i, b: algo.update(b, i), reference_step, seg_batches(tgt_size=(32, 64)))
    assert [a["ent_on"] for a, _ in logs] == [b["triger_ent"] for _, b in logs] == [0.0] * 11 + [1.0] * 9
    assert_losses_match(logs, {"seg": "loss_seg_src", "ent": "loss_ent_trg"})


def test_fda_translation_is_the_authors_torch_one():
    """The method's swap against ``FDA_source_to_target`` on the same raw pixels, at the paper's
    three bands (and a wide one) on Cityscapes-shaped (1:2) images, b = 1, 6, 11, 25; 1e-3 of 255
    absolute: float32 FFTs of 0-255 images sum 32768 terms, with rounding of about 1e-4."""
    algo = build("fda")
    g = torch.Generator().manual_seed(3)
    src, tgt = torch.rand(2, 3, 128, 256, generator=g) * 2 - 1, torch.rand(2, 3, 128, 256, generator=g) * 1.5 - 0.5
    for beta in (0.01, 0.05, 0.09, 0.2):
        algo.hp["beta"] = beta
        ours = fda_ref.pixels(algo.translate(src, tgt))
        theirs = fda_ref.FDA_source_to_target(fda_ref.pixels(src), fda_ref.pixels(tgt), L=beta)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-3)


def test_defaults_are_the_authors():
    asn_args, cfg, fda_args = asn.Args(), adv.TrainConfig(), fda_ref.Args()
    seg = {"lr": 2.5e-4, "weight_decay": 5e-4, "power": 0.9, "head_lr_mult": 10.0}
    assert {k: defaults(algorithms.get("fda").space("segmentation"))[k] for k in seg} == seg
    assert (asn_args.learning_rate, asn_args.weight_decay, asn_args.power) == (cfg.LEARNING_RATE, cfg.WEIGHT_DECAY,
                                                                               cfg.POWER) == (2.5e-4, 5e-4, 0.9)
    hp = defaults(algorithms.get("adaptsegnet").space("segmentation"))
    assert (hp["lr"], hp["weight_decay"], hp["power"], hp["aux_weight"], hp["lambda_adv"], hp["lambda_adv_aux"],
            hp["lr_d"], hp["gan"]) == (asn_args.learning_rate, asn_args.weight_decay, asn_args.power,
                                       asn_args.lambda_seg, asn_args.lambda_adv_target2, asn_args.lambda_adv_target1,
                                       asn_args.learning_rate_D, "vanilla")
    hp = defaults(algorithms.get("advent").space("segmentation"))
    assert (hp["aux_weight"], hp["lambda_adv"], hp["lambda_adv_aux"], hp["lr_d"]) == (
        cfg.LAMBDA_SEG_AUX, cfg.LAMBDA_ADV_MAIN, cfg.LAMBDA_ADV_AUX, cfg.LEARNING_RATE_D)
    hp = defaults(algorithms.get("minent").space("segmentation"))
    assert (hp["aux_weight"], hp["lambda_ent"], hp["lambda_ent_aux"]) == (cfg.LAMBDA_SEG_AUX, cfg.LAMBDA_ENT_MAIN,
                                                                          cfg.LAMBDA_ENT_AUX)
    hp = defaults(algorithms.get("fda").space("segmentation"))
    assert (hp["lambda_ent"], hp["eta"]) == (fda_args.entW, fda_args.ita)
    assert hp["beta"] == 0.01  # the README's command (train.py's own LB default is 0.1)


def lrs(*optims) -> list[float]:
    return [g["lr"] for o in optims for g in o.param_groups]


@pytest.mark.parametrize("name, steps, horizon", [("adaptsegnet", 150_000, 250_000), ("adaptsegnet-single", 150_000, 250_000),
                                                  ("advent", 120_000, 250_000), ("minent", 120_000, 250_000),
                                                  ("fda", 100_000, 150_000)])
def test_schedules_match_the_authors_over_a_whole_run(name, steps, horizon):
    """A run of the authors' length (NUM_STEPS_STOP 150000, EARLY_STOP 120000, num_steps_stop
    100000): every rate at iterations across it equals theirs, decaying over their 250000 (150000)."""
    algo = build(name, steps=steps)
    net = twin(algo.segmenter)
    if name.startswith("adaptsegnet"):
        tr = asn.Trainer(net, asn.FCDiscriminator(K), asn.FCDiscriminator(K), asn.Args())
        assert (tr.args.num_steps, tr.args.num_steps_stop) == (horizon, steps)
        theirs = lambda i: (tr.adjust_learning_rate(tr.optimizer, i), tr.adjust_learning_rate_D(tr.optimizer_D2, i),  # noqa: E731
                            lrs(tr.optimizer, tr.optimizer_D2))[-1]
        ours = lambda i: (algo.set_rates(i), lrs(algo.optims["seg"], algo.optims["disc"]))[-1]  # noqa: E731
    elif name == "advent":
        tr = adv.AdvEntTrainer(net, adv.get_fc_discriminator(K), adv.get_fc_discriminator(K), adv.TrainConfig())
        assert (tr.cfg.MAX_ITERS, tr.cfg.EARLY_STOP) == (horizon, steps)
        theirs = lambda i: (tr.adjust_learning_rates(i), lrs(tr.optimizer, tr.optimizer_d_main))[-1]  # noqa: E731
        ours = lambda i: (algo.set_rates(i), lrs(algo.optims["seg"], algo.optims["disc"]))[-1]  # noqa: E731
    elif name == "minent":
        tr = ment.MinEntTrainer(net, adv.TrainConfig())
        theirs = lambda i: (tr.adjust_learning_rates(i), lrs(tr.optimizer))[-1]  # noqa: E731
        ours = lambda i: (algo.set_rates(i), lrs(algo.optims["seg"]))[-1]  # noqa: E731
    else:
        tr = fda_ref.Trainer(net, fda_ref.Args())
        assert (tr.args.num_steps, tr.args.num_steps_stop) == (horizon, steps)
        theirs = lambda i: (tr.adjust_learning_rate(i), lrs(tr.optimizer))[-1]  # noqa: E731
        ours = lambda i: (algo.set_rates(i), lrs(algo.optims["seg"]))[-1]  # noqa: E731
        for i in (0, 1, 49_999, 50_000, 50_001, 50_002, 99_999):
            assert float(algo.entropy_on(i)) == tr.triger_ent(i), f"entropy switch at iteration {i}"
    for i in (0, 1, 1000, steps // 3, steps // 2, steps - 1000, steps - 1):
        assert ours(i) == pytest.approx(theirs(i), rel=1e-12), f"rates at iteration {i}"
    assert ours(steps - 1)[0] > 0.3 * 2.5e-4  # the decay is still far from 0 when training stops
