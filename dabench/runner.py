"""One run, from a RunConfig to a finished run folder: the Python API behind ``dabench run``.

    from dabench import RunConfig, run
    result = run(RunConfig(algo="dann", src="syndigits", tgt="uci-digits"))

Everything the user can get wrong is checked before the run folder is created, so bad input
never leaves a half-made folder behind.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import platform
import shutil
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import dabench
from dabench import distributed, tracking
from dabench import hparams as hp
from dabench.algorithm import Algorithm
from dabench.data import Domain
from dabench.errors import DabenchError, RunFailed
from dabench.files import RunLock, writable_folder
from dabench.protocol import SETTINGS, Splits, build_splits, load_domain, resolve_data_root, split_rules
from dabench.registry import Spec, algorithms, backbones, resolved_name, shared_images
from dabench.runfolder import (CACHE, CHECKPOINT, CONFIG, FAILED, failure, identity_differences, is_done, is_started,
                              mark_done, mark_failed, read_config, run_dir_of, run_records, write_config)
from dabench.swad import N_TOLERANCE
from dabench.tasks import CLASSIFICATION, TASKS, task_of
from dabench.trainer import NullReporter, seed_all, train_and_evaluate

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class RunConfig:
    algo: str
    src: str | Domain | list  # a data set name (uci-digits, folder:PATH) or a Domain (dabench.from_arrays makes
    # one); several sources: "a,b,c" or a list of those
    tgt: str | Domain
    backbone: str | None = None  # None: the task's default (digit-cnn for classification)
    tgt_labeled: int | str = 0  # labelled target samples, or "all" (every target train image labelled)
    steps: int = 2000
    eval_every: int | None = None  # None: the task's default (eval_every_for)
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)  # hyperparameter values set by hand, as -H key=value
    hparam_index: int = 0  # random-search sample (0 = defaults); overrides apply on top
    data_root: str | None = None  # default: $DABENCH_DATA
    out: str = "runs"
    device: str = "auto"
    precision: str = "fp32"
    image_size: int | None = None
    pretrained: str | None = None
    channels_last: bool = False
    protocol: str = "dabench"  # "paper": no hold-outs, the target's official test split, last-step selection
    setting: str = "uda"  # "dg": domain generalisation, no target image in training
    workers: int | None = None  # data-loading processes for file-backed data; None: default_workers
    log: str = "jsonl"  # every step's losses in steps.jsonl; "tensorboard", "mlflow": also to that tracker
    dev: bool = False  # also score DEV at every evaluation (a domain classifier fitted each time)
    swad: bool = False  # SWAD: average the weights over the source-validation loss valley (dabench.swad)
    sync_bn: bool = False  # under torchrun: batch-norm statistics over all ranks' images
    compile: bool = False  # torch.compile the networks (same weights and checkpoints; kernels may differ in the last bits)
    resume: bool | str = False  # True: continue an unfinished run; "auto": continue one if present, else start
    overwrite: bool = False


def _takes_old_hparams(init):
    """``RunConfig(hparams=...)``, dabench 0.1's name of ``overrides`` (``hparams`` now means the
    values a run used, as config.json says), still works, with a DeprecationWarning."""
    @functools.wraps(init)
    def __init__(self, *args, hparams: dict[str, Any] | None = None, **kwargs):
        if hparams is not None:
            warnings.warn("RunConfig(hparams=...) is now RunConfig(overrides=...).", DeprecationWarning, stacklevel=2)
            kwargs["overrides"] = {**hparams, **kwargs.get("overrides", {})}
        init(self, *args, **kwargs)
    return __init__


RunConfig.__init__ = _takes_old_hparams(RunConfig.__init__)


@dataclass
class RunResult:
    run_dir: Path
    config: dict[str, Any]
    records: list[dict]
    already_done: bool = False

    @property
    def final(self) -> dict:
        return self.records[-1] if self.records else {}


@dataclass
class Built:
    """A checked config with everything built: what ``run`` trains."""

    config: dict[str, Any]
    splits: Splits
    algorithm: Algorithm
    device: torch.device
    run_dir: Path


def size_text(size: int | tuple[int, int]) -> str:
    """28 -> "28x28"; (1024, 512) -> "1024x512" (width x height)."""
    return "x".join(map(str, size if isinstance(size, tuple) else (size, size)))


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value <= 0:
        raise DabenchError(f"{name} must be a positive whole number, got {value!r}.")


def default_workers(device: torch.device, cpus: int | None = None, processes: int = 1) -> int:
    """Data-loading processes when --workers is not given: none on a CPU (the cores train), up to
    8 per process on a GPU (decoding full-size PNGs must keep up with it)."""
    if device.type != "cuda":
        return 0
    return max(1, min(8, (cpus or os.cpu_count() or 1) // max(1, processes) - 1))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DabenchError("--device cuda was asked for but PyTorch sees no CUDA GPU here. Use --device cpu or auto.")
    if name not in ("cpu", "cuda"):
        raise DabenchError(f"--device must be auto, cpu or cuda, got '{name}'.")
    return torch.device(name)


def cpu_model() -> str:
    """The processor's name (Linux: /proc/cpuinfo's model name), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, str]:
    """The CPU model and the device that trains: runs repeat bit for bit on one model of each
    (seen: ERM's seeds differ by up to 0.5 points at the last step between an Intel Xeon and an AMD
    EPYC, and M3SDA's default diverges on one and not the other; the leaderboard says when a table mixes them)."""
    return {"cpu": cpu_model(), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}


def environment(device: torch.device | None = None) -> dict[str, Any]:
    """Versions and git revision, recorded so a number can be traced to the code that made it
    (and, given the run's device, the machine it ran on)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for pkg in ("dabench", "torch", "torchvision", "timm", "numpy", "segmentation-models-pytorch"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    git = None
    try:
        here = Path(__file__).resolve().parent
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if rev.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
            git = rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    # CPU kernels split their sums by thread, so the last bits (and, through adversarial training,
    # the final numbers) depend on the thread count: record it with the versions.
    # Likewise the number of processes (torchrun): it changes the order of the gradient sums.
    env = {"versions": versions, "git": git, "torch_threads": torch.get_num_threads(), "world_size": distributed.world()[1]}
    return env | ({"machine": machine(device)} if device is not None else {})


def build_algorithm(config: dict[str, Any], image_size, device: torch.device, pretrained: str | None = None) -> Algorithm:
    """The untrained algorithm a recorded config describes (seeded as the run was)."""
    seed_all(config["seed"])
    spec = Spec.parse(config["backbone"])
    backbone = backbones.get(spec.name)(spec.arg, in_channels=3, image_size=image_size, pretrained=pretrained,
                                        num_classes=len(config["classes"]))
    algorithm = algorithms.get(config["algo"])(backbone, len(config["classes"]), config["hparams"], config["steps"]).to(device)
    if config.get("channels_last"):
        algorithm = algorithm.to(memory_format=torch.channels_last)
    if config.get("precision") == "fp16":
        algorithm.scaler = torch.amp.GradScaler(device.type)
    return algorithm


def dg_algorithms() -> list[str]:
    """The algorithms domain generalisation can run (``Algorithm.runs_in_dg``)."""
    names = []
    for name in algorithms.names():
        try:
            cls = algorithms.get(name)
        except DabenchError:
            continue
        if cls.runs_in_dg():
            names.append(name)
    return names


def compile_networks(module: torch.nn.Module) -> None:
    """``--compile``: torch.compile every network an algorithm calls (its direct submodules, and the
    entries of its ModuleDicts and ModuleLists), in place (``nn.Module.compile``), so parameter
    names, checkpoints and ``selected.pt`` stay those of an eager run."""
    for child in module.children():
        if isinstance(child, (torch.nn.ModuleDict, torch.nn.ModuleList)):
            compile_networks(child)
        elif any(True for _ in child.parameters()):
            child.compile()


# The options a run folder records that make it that run (config.json keys = RunConfig fields).
REPLAYED = ("algo", "src", "tgt", "backbone", "tgt_labeled", "steps", "eval_every", "seed", "hparam_index",
            "precision", "image_size", "pretrained", "channels_last", "protocol", "setting", "swad", "compile", "sync_bn")


def from_record(path: str | Path, **options) -> tuple[RunConfig, list[str]]:
    """The ``RunConfig`` of a recorded run (a run folder, or its config.json): the same options,
    hyperparameter values and seed; ``options`` (out, device, data_root, workers, log, resume,
    overwrite) are this machine's. Returns it with one sentence per way this machine differs from
    the recording one (threads, package versions, git revision), where the numbers may then differ.
    The file is read as data (JSON), never executed."""
    path = Path(path)
    run_dir = path.parent if path.name == CONFIG else path
    if not (run_dir / CONFIG).is_file():
        raise DabenchError(f"--from {path}: no config.json there, so it is not a run folder. Give a folder dabench run "
                           "made (it holds config.json and results.jsonl) or its config.json.")
    recorded = read_config(run_dir)
    missing = [k for k in ("algo", "src", "tgt", "seed", "steps", "hparams") if k not in recorded]
    if missing:
        raise DabenchError(f"--from {path}: its config.json lacks {', '.join(missing)}; it was not written by dabench "
                           "run. Give a run folder.")
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    kwargs = {k: recorded[k] for k in REPLAYED if k in recorded and k in fields}
    algo_cls = algorithms.get(str(recorded["algo"]))  # unknown: exit 2 naming the algorithms there are
    task, regime = recorded.get("task", CLASSIFICATION), recorded.get("regime")
    space = algo_cls.space(task, regime)
    values = recorded["hparams"] if isinstance(recorded["hparams"], dict) else {}
    gone = sorted(set(values) - set(space))
    if gone:
        raise DabenchError(f"--from {path}: the run used hyperparameters this dabench's '{recorded['algo']}' no longer "
                           f"has: {', '.join(gone)} (recorded by dabench {(recorded.get('versions') or {}).get('dabench')}). "
                           "Install that version to repeat it, or start a new run.")
    defaults = hp.defaults(space)
    given = set(recorded.get("overrides") or [])
    kwargs["overrides"] = {k: v for k, v in values.items() if k in given or v != defaults.get(k)}
    cfg = RunConfig(**kwargs, **options)
    notes = []
    now = environment(resolve_device(cfg.device))
    for part, what in (("cpu", "CPU"), ("device", "training device")):
        was, here = (recorded.get("machine") or {}).get(part), now["machine"][part]
        if was is not None and was != here:
            notes.append(f"it ran on the {what} '{was}', this machine's is '{here}': kernels differ between models, so the "
                         "numbers may differ in their last digits and, through training, more")
    if recorded.get("torch_threads") not in (None, now["torch_threads"]):
        notes.append(f"it ran with {recorded['torch_threads']} torch threads, this machine uses {now['torch_threads']}: "
                     "CPU sums split by thread, so the numbers may differ in their last digits and, through training, more")
    for pkg, version in sorted((recorded.get("versions") or {}).items()):
        if version != now["versions"].get(pkg):
            notes.append(f"it ran with {pkg} {version}, this machine has {now['versions'].get(pkg)}: the numbers may differ")
    if recorded.get("git") and recorded.get("git") != now["git"]:
        notes.append(f"it ran at git revision {recorded['git']}, this code is at {now['git']}: the numbers may differ")
    return cfg, notes


def _config_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config's fields, shallow (a ``Domain`` given as src or tgt stays one object)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)} | {"overrides": dict(cfg.overrides)}


def _domain_name(value: str | Domain | list) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(_domain_name, value))
    return value.name if isinstance(value, Domain) else value


def _resolved(value: str | Domain | list) -> str | Domain | list:
    """Domain names with their path arguments made absolute (``registry.resolved_name``)."""
    if isinstance(value, (list, tuple)):
        return [_resolved(v) for v in value]
    if isinstance(value, Domain):
        return value
    return ",".join(resolved_name(n.strip()) if n.strip() else n for n in str(value).split(","))


def source_list(value: str | Domain | list) -> list[str | Domain]:
    """The source domains ``--src`` names: "a,b,c" or a list -> each one; one domain -> [it]."""
    if isinstance(value, (list, tuple)):
        return [d for v in value for d in source_list(v)]
    if isinstance(value, Domain):
        return [value]
    names = [n.strip() for n in str(value).split(",")]
    if not all(names):
        raise DabenchError(f"--src '{value}': an empty name between commas. Write the sources as a,b,c.")
    return names


def eval_every_for(task: str | None, steps: int, given: int | None) -> int:
    """``--eval-every`` as given, or the task's default: every 200 steps for classification (an
    evaluation of a few thousand small images costs a few steps); for segmentation every
    max(200, steps // 10) steps, so that a stage evaluates about 10 times. By FLOP count
    (benchmarks/RESULTS.md: 6.75 TFLOP per AdaptSegNet iteration, forwards of 1.31 TFLOP at
    1280x720 and 0.74 at 1024x512), one GTA5 -> Cityscapes evaluation costs 1,087 iterations with
    the uncapped 20% source val (4,993 + 595 + 500 images) and 207 with the protocol's cap (500 +
    500 + 500): at every 200 steps a run would evaluate for 5.4 (uncapped) or 1.0 times its
    training; at this default, 150k steps evaluate for 1.4% of it."""
    if given is not None:
        return given
    return task_of(task or CLASSIFICATION).eval_every(steps)


def regime_of(backbone: str) -> str:
    """The kind of data whose published defaults a run on ``backbone`` takes (``digits``: the
    digit CNN, trained from scratch; ``imagenet``: any other backbone), as the backbone plugin
    declares it."""
    try:
        return getattr(backbones.get(Spec.parse(backbone).name), "regime", "imagenet")
    except DabenchError:
        return "imagenet"  # an unknown backbone is refused later, with its own message


def hparam_values(cfg: RunConfig, algo_cls, task: str) -> tuple[dict[str, Any], str]:
    """The hyperparameter values of ``cfg`` (its search sample, then its ``-H`` overrides) in the
    regime of its backbone, and that regime."""
    regime = regime_of(cfg.backbone or task_of(task).default_backbone)
    space = algo_cls.space(task, regime)
    return hp.apply_overrides(space, hp.sample(space, cfg.algo, cfg.hparam_index), cfg.overrides), regime


def _recorded(cfg: RunConfig, task: str, algo_cls, values: dict[str, Any]) -> dict[str, Any]:
    """The config as ``config.json`` records it, before the data-dependent fields are added."""
    tgt_labeled = "all" if algo_cls.target_labels == "all" and not cfg.tgt_labeled else cfg.tgt_labeled
    # A run is named by the folder it reads, not the words typed for it: folder:data typed in another
    # directory is other images, hence another run (path arguments are recorded resolved).
    config = _config_dict(cfg) | {"src": _domain_name(source_list(_resolved(cfg.src))), "tgt": _domain_name(_resolved(cfg.tgt)),
                                  "eval_every": eval_every_for(task, cfg.steps, cfg.eval_every),
                                  "backbone": cfg.backbone or task_of(task).default_backbone, "tgt_labeled": tgt_labeled,
                                  "hparams": values, "overrides": sorted(cfg.overrides)}  # the -H keys: a variant
    for transient in ("resume", "overwrite", "out", "data_root", "device", "workers", "log", "dev"):
        config.pop(transient)
    return config


def _candidate_dirs(cfg: RunConfig) -> list[Path]:
    """The run folders ``cfg`` can have, found from the config alone: no data is loaded and no
    network built. The task (which decides the default backbone and hyperparameters) is not known
    without the data, so there is one per task the algorithm supports; the folder name hashes
    every field, so only the true one can exist."""
    try:
        algo_cls = algorithms.get(cfg.algo)
        tasks = tuple(TASKS) if algo_cls.task == "any" else (algo_cls.task,)
        dirs = []
        for task in tasks:
            values, _ = hparam_values(cfg, algo_cls, task)
            dirs.append(run_dir_of(_recorded(cfg, task, algo_cls, values), cfg.out))
        return dirs
    except DabenchError:
        return []  # ``build`` explains what is wrong


def finished_run(cfg: RunConfig) -> Path | None:
    """The folder of a finished run of ``cfg`` (with ``done``), found without building anything:
    re-running a finished sweep is instant."""
    return next((d for d in _candidate_dirs(cfg) if is_done(d) and is_started(d)), None)


def existing_run(cfg: RunConfig) -> Path | None:
    """The folder of ``cfg``'s run if one was started (finished or not)."""
    return next((d for d in _candidate_dirs(cfg) if is_started(d)), None)


def build(cfg: RunConfig) -> Built:
    """Check the config, build data, backbone and algorithm; create nothing on disk."""
    _positive("--steps", cfg.steps)
    if cfg.eval_every is not None:
        _positive("--eval-every", cfg.eval_every)
    if cfg.image_size is not None:
        _positive("--image-size", cfg.image_size)
    writable_folder(Path(cfg.out).expanduser(), "--out")
    if cfg.workers is not None and cfg.workers < 0:
        raise DabenchError(f"--workers must be 0 or more, got {cfg.workers}.")
    tracking.check(cfg.log)
    if cfg.precision not in PRECISIONS:
        raise DabenchError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{cfg.precision}'.")
    if cfg.seed < 0 or cfg.hparam_index < 0:
        raise DabenchError("--seed and the hparam sample index must be 0 or more.")
    if cfg.tgt_labeled != "all" and (not isinstance(cfg.tgt_labeled, int) or cfg.tgt_labeled < 0):
        raise DabenchError(f"--tgt-labeled must be 0 or a positive number of target samples, got {cfg.tgt_labeled!r}.")
    device = resolve_device(cfg.device)
    algo_cls = algorithms.get(cfg.algo)

    if algo_cls.target_labels == "required" and not cfg.tgt_labeled:
        raise DabenchError(
            f"'{cfg.algo}' is a supervised DA method: it needs a few labelled target samples. "
            f"Add --tgt-labeled N (for example --tgt-labeled 100 for 10 per class on digits)."
        )

    root = resolve_data_root(cfg.data_root)
    if cfg.setting not in SETTINGS:
        raise DabenchError(f"--setting must be one of {', '.join(SETTINGS)}, got '{cfg.setting}'.")
    if cfg.setting == "dg" and not algo_cls.runs_in_dg():
        raise DabenchError(
            f"'{cfg.algo}' trains on target images, and domain generalisation (--setting dg) sees none. Choose an "
            f"algorithm that runs without them ({', '.join(dg_algorithms())}), or use --setting uda.")
    if cfg.setting == "uda" and algo_cls.dg_only:
        raise DabenchError(
            f"'{cfg.algo}' is a domain generalisation method: it aligns source domains with each other and takes no "
            f"target image. Add --setting dg with several sources (--src a,b,c), or pick a DA method for "
            f"{cfg.src} -> {cfg.tgt} (dabench list algorithms).")
    names = source_list(cfg.src)
    if not isinstance(cfg.tgt, Domain) and (same := shared_images([n for n in names if isinstance(n, str)], cfg.tgt)):
        if cfg.setting == "dg":
            where, fix = f"Domain generalisation holds {cfg.tgt} out", "Drop it from --src."
        else:
            where, fix = (f"The target is {cfg.tgt}", "Pick a source with images of its own (e.g. mnist5k -> mnistm5k); "
                          "for a within-domain reference, --algo oracle trains on the target's own labels.")
        raise DabenchError(f"{where}, but the source {', '.join(same)} holds its images (the same data set, or one made "
                           f"from it): training on their labels would test on images the model was trained on. {fix}")
    src = load_domain(names[0], root, cfg.image_size)
    size = task_of(src.task).load_size(cfg.image_size, src.image_size)  # one size, or each domain's own
    sources = [src] + [load_domain(n, root, size) for n in names[1:]]
    tgt = load_domain(cfg.tgt, root, size)
    if algo_cls.task not in ("any", src.task):
        raise DabenchError(
            f"'{cfg.algo}' is a {algo_cls.task} algorithm but {src.name} -> {tgt.name} is a {src.task} pair. "
            f"See 'dabench list algorithms' for the {src.task} ones."
        )
    values, regime = hparam_values(cfg, algo_cls, src.task)
    if (refused := algo_cls.refuses(values, len(sources))) is not None:
        raise DabenchError(f"'{cfg.algo}': {refused}")
    config = _recorded(cfg, src.task, algo_cls, values) | {"regime": regime}
    if cfg.swad:
        _check_swad(config)
    factory = backbones.get(Spec.parse(config["backbone"]).name)
    if getattr(factory, "task", "any") not in ("any", src.task):
        raise DabenchError(f"Backbone '{config['backbone']}' is for {factory.task}, but this is a {src.task} pair.")
    if task_of(src.task).one_size and (sizes := {d.name: d.image_size for d in [*sources, tgt]}) and len(set(sizes.values())) > 1:
        listed = ", ".join(f"{n} {size_text(s)}" for n, s in sizes.items())
        raise DabenchError(f"Classification domains share one image size, got {listed}. Resize the arrays to one size "
                           "(data sets loaded by name are resized for you; --image-size picks the size).")
    splits = build_splits(sources, tgt, config["tgt_labeled"], cfg.seed, cfg.protocol, cfg.setting)
    _check_split_sizes(splits, cfg.protocol, src.name, tgt.name, tgt.labeled)
    config |= {
        "task": src.task, "metric": task_of(src.task).metric, "classes": src.classes,
        **({"class_subsets": tgt.class_subsets} if tgt.class_subsets else {}),
        **({"colours": tgt.colours} if tgt.colours else {}),
        "eval_size": size_text(tgt.image_size),  # the target images' input size (W x H)
        "image_sizes": {"src": size_text(src.image_size), "tgt": size_text(tgt.image_size)},
        "splits": splits.sizes(), "split_rules": split_rules(src.task, cfg.protocol),
        "data": {"src": src.info, "tgt": tgt.info} | ({"sources": [s.info for s in sources]} if len(sources) > 1 else {}),
    }
    if len(sources) > 1:
        config["sources"] = [s.name for s in sources]
    run_dir = run_dir_of(config, cfg.out)
    config["run_id"] = run_dir.name

    algorithm = build_algorithm(config, src.image_size, device, cfg.pretrained)
    return Built(config, splits, algorithm, device, run_dir)


def _check_swad(config: dict[str, Any]) -> None:
    """SWAD reads the source-validation loss at every evaluation and averages over a window of
    ``N_TOLERANCE`` of them: refuse a run that has no source validation or too few evaluations."""
    if config["protocol"] != "dabench":
        raise DabenchError("--swad finds its averaging window on the source-validation loss, and the 'paper' protocol "
                           "holds no source validation out. Use --protocol dabench.")
    steps, every = config["steps"], config["eval_every"]
    evaluations = -(-steps // every)
    if evaluations < N_TOLERANCE:
        raise DabenchError(f"--swad averages over a window of {N_TOLERANCE} evaluations of the source-validation loss; "
                           f"{steps} steps at --eval-every {every} give {evaluations}. Use --steps {N_TOLERANCE * every} "
                           f"or more, or --eval-every {steps // N_TOLERANCE} or less.")


def _check_split_sizes(splits: Splits, protocol: str, src: str, tgt: str, tgt_has_labels: bool) -> None:
    """Every split the run trains or scores on holds an image, before anything is built (the
    "paper" protocol holds nothing out: it has no validation splits to fill; a target without
    labels has nothing to score)."""
    needed = {"src_train": src} | ({"src_val": src} if protocol == "dabench" else {})
    if tgt_has_labels:
        needed |= {"tgt_test": tgt} | ({"tgt_val": tgt} if protocol == "dabench" else {})
    if splits.tgt_train is not None:
        needed["tgt_train"] = tgt
    if splits.tgt_labeled is not None:
        needed["tgt_labeled"] = tgt
    sizes = splits.sizes()
    empty = [k for k in needed if sizes[k] == 0]
    if empty:
        which = ", ".join(f"{k.replace('_', '-')} ({needed[k]})" for k in empty)
        raise DabenchError(f"Too few images to split: {which} would hold no image (sizes: "
                           f"{', '.join(f'{k} {v}' for k, v in sizes.items())}). The protocol holds out 20% of each "
                           "domain's train images for validation and, without an official test split, 25% of the "
                           "target for test: give each domain at least 10 images.")


def _check_resumable(run_dir: Path, config: dict) -> None:
    if run_dir.exists():
        if is_started(run_dir):
            saved = read_config(run_dir)
            if diff := identity_differences(saved, config):
                raise DabenchError(f"--resume: the run in {run_dir} was made with a different config ({diff}). Resume with the same options, or start a new run without --resume.")
        return
    siblings = [p for p in run_dir.parent.glob(f"seed{config['seed']}-*") if is_started(p)]
    detail = ""
    if siblings:
        saved = read_config(siblings[0])
        detail = f" The nearest one, {siblings[0]}, differs in: {identity_differences(saved, config)}."
    raise DabenchError(f"--resume: there is no run of this exact config at {run_dir}.{detail} Resume with the options of the original run, or drop --resume.")


def _data_key(config: dict) -> dict:
    """What identifies the unlabelled data a run sees, whatever its algorithm and budget: caches
    derived from it alone (e.g. translated source images) are shared by runs with the same key."""
    sizes = {k: config["splits"][k] for k in ("src_train", "tgt_train")}
    return {k: config[k] for k in ("src", "tgt", "image_sizes", "seed")} | {"splits": sizes, "dabench": dabench.__version__}


@contextlib.contextmanager
def repeatable_kernels(device: torch.device):
    """On a GPU, kernels that repeat bit for bit, so that a run repeats and resumes to the same
    numbers there too: cuDNN's deterministic algorithms and no benchmarking (which picks kernels by
    timing them, so two runs can pick differently), as DomainBed's train.py sets them, and
    PyTorch's deterministic version of every other op that has one (an op without one warns, naming
    itself, and runs as it is). The settings are the process's, so they are put back after the run
    (a notebook keeps its own). On a CPU the kernels repeat at a fixed thread count already."""
    if device.type != "cuda":
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs
    cudnn = torch.backends.cudnn
    saved = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn.benchmark, cudnn.deterministic = False, True
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


def run(cfg: RunConfig, reporter: NullReporter | None = None) -> RunResult:
    """Train and evaluate one config; returns its records and run folder. A config that already
    finished returns its records at once (``already_done``), without loading data or network."""
    rank, world_size = distributed.setup(cfg.device)  # under torchrun: join the process group; else (0, 1)
    main = rank == 0
    if cfg.resume is not True and not cfg.overwrite and (done := finished_run(cfg)) is not None:
        return RunResult(done, read_config(done), run_records(done, strict=True), already_done=True)
    prep = build(cfg)
    # One writer per run folder: rank 0 holds the lock for the run's whole life (under torchrun the
    # other ranks write nothing, and torchrun ends them when rank 0 fails to take it).
    with RunLock(prep.run_dir) if main else contextlib.nullcontext():
        return _train(cfg, prep, reporter, main, world_size)


def _train(cfg: RunConfig, prep: Built, reporter: NullReporter | None, main: bool, world_size: int) -> RunResult:
    run_dir, config = prep.run_dir, prep.config
    if world_size > 1:
        if cfg.sync_bn:
            prep.algorithm = torch.nn.SyncBatchNorm.convert_sync_batchnorm(prep.algorithm)  # same Parameters
        distributed.synchronise(prep.algorithm)
    if cfg.compile:
        compile_networks(prep.algorithm)
    if (failed := failure(run_dir)) and not cfg.overwrite:  # a divergence is the config's result: not retried
        raise RunFailed(f"This config stopped on a non-finite loss before (step {failed['step']}; recorded in "
                        f"{run_dir / FAILED}): {failed['message']} Add --overwrite to run it again.")
    resume = cfg.resume
    if resume == "auto":
        resume = run_dir.exists() and not is_done(run_dir)
    if resume:
        _check_resumable(run_dir, config)
    elif run_dir.exists() and cfg.overwrite:
        distributed.barrier()  # every rank has looked at the folder before rank 0 deletes it
        if main:
            shutil.rmtree(run_dir)
    elif is_done(run_dir):
        return RunResult(run_dir, config, run_records(run_dir, strict=True), already_done=True)
    elif run_dir.exists():
        raise DabenchError(
            f"An unfinished run of this exact config is already in {run_dir}. Add --resume to continue it, "
            "or --overwrite to delete it and start again."
        )
    if is_done(run_dir):
        return RunResult(run_dir, config, run_records(run_dir, strict=True), already_done=True)

    distributed.barrier()  # every rank has decided before rank 0 writes
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume or not is_started(run_dir):
            write_config(run_dir, config | environment(prep.device))
    distributed.barrier()
    torch.manual_seed(cfg.seed)  # the model was built from this seed; batches come from (seed, step)
    workers = cfg.workers if cfg.workers is not None else default_workers(prep.device, processes=world_size)
    try:
        with repeatable_kernels(prep.device):
            records = train_and_evaluate(prep.algorithm, prep.splits, eval_every=prep.config["eval_every"], seed=cfg.seed,
                run_dir=run_dir, device=prep.device, precision=cfg.precision, channels_last=cfg.channels_last,
                resume=resume, reporter=reporter, workers=workers, cache_dir=Path(cfg.out) / CACHE,
                data_key=_data_key(config), log=cfg.log, dev=cfg.dev, swad=cfg.swad)
    except RunFailed as exc:  # a non-finite loss: a result of the config, so the folder stays and says so
        if main:
            mark_failed(run_dir, exc.step, str(exc))
        raise
    except BaseException:  # refused, crashed or interrupted
        if main and not (run_dir / CHECKPOINT).exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing trained yet: leave no half-made run behind
        raise  # after a checkpoint the folder stays, and --resume continues it
    if main:
        mark_done(run_dir)
    return RunResult(run_dir, config, records)
