"""The ``dabench`` command: parses arguments, calls the Python API, prints. Nothing else."""
from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dabench.errors import DabenchError, RunFailed
from dabench.tasks import TASKS, task_of

# soft_wrap: a line longer than the terminal is left whole (paths stay copyable); tables still fit the width
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def _parse_h(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DabenchError(f"-H expects key=value (for example -H lr=0.01), got '{item}'.")
        out[key.strip()] = value.strip()
    return out


def _budget(text: str) -> int | str:
    """A labelled-target budget: a whole number of 0 or more, or 'all'."""
    text = text.strip().lower()
    if text == "all":
        return "all"
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise DabenchError(f"--tgt-labeled expects a number of labelled target images (0 or more) or 'all', got '{text}'.")
    return value


def _budgets(text: str) -> list[int | str]:
    values = [_budget(v) for v in text.split(",") if v.strip()]
    if not values:
        raise DabenchError("--tgt-labeled expects budgets separated by commas, e.g. 0,100,all.")
    return list(dict.fromkeys(values))


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DabenchError(f"{what} expects whole numbers separated by commas, got '{text}'.") from None
    if not values or any(v < 0 for v in values):
        raise DabenchError(f"{what} expects numbers of 0 or more, got '{text}'.")
    return values


class _Group(click.Group):
    """Turns DabenchError into one paragraph on stderr and exit code 2; RunFailed into exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DabenchError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True, soft_wrap=True)
            sys.exit(2)
        except RunFailed as exc:
            err_console.print(f"[bold red]run failed:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(1)
        except KeyboardInterrupt:
            err_console.print("interrupted: continue later with the same command plus --resume")
            sys.exit(130)


@click.group(cls=_Group)
@click.version_option(package_name="dabench")
def main() -> None:
    """dabench: run, sweep and compare domain adaptation methods under one protocol."""


def _run_options(f):
    options = [
        click.option("--backbone", default=None, help="backbone name (default: digit-cnn for classification); e.g. timm:resnet50"),
        click.option("--steps", type=int, default=2000, show_default=True,
                     help="training steps (a multi-stage method: of its main stage; udas: adaptation)"),
        click.option("--eval-every", type=int, default=None,
                     help="evaluate and checkpoint every N steps [default: 200 for classification; "
                          "max(200, steps/10) for segmentation]"),
        click.option("-H", "hparam", multiple=True, metavar="KEY=VALUE", help="override a hyperparameter (repeatable)"),
        click.option("--data-root", type=click.Path(), default=None, help="folder holding your data sets (default: $DABENCH_DATA)"),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                     help="where to train: auto (a GPU when there is one), cpu or cuda"),
        click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
                     help="fp32, or mixed precision on a GPU: bf16 (autocast), fp16 (autocast and loss scaling)"),
        click.option("--image-size", type=int, default=None,
                     help="classification: side of the square images; segmentation: the training height, each "
                          "domain keeping its aspect (default: the data set's own)"),
        click.option("--pretrained", type=click.Path(), default=None,
                     help="backbone weights: a local file, or imagenet (timm's ImageNet weights, downloaded once by timm)"),
        click.option("--channels-last", is_flag=True, help="channels_last memory format (faster convolutions on GPU)"),
        click.option("--workers", type=int, default=None,
                     help="data loading processes for file-backed data (default: 0 on a CPU, up to 8 on a GPU)"),
        click.option("--log", type=click.Choice(["jsonl", "tensorboard", "mlflow"]), default="jsonl", show_default=True,
                     help="every step's losses go to the run folder's steps.jsonl; tensorboard: also TensorBoard "
                          "event files in its tensorboard/ (pip install 'dabench[tensorboard]'); mlflow: also an "
                          "MLflow run in $MLFLOW_TRACKING_URI, else OUT/mlflow.db (pip install 'dabench[mlflow]')"),
        click.option("--dev", is_flag=True, help="also score deep embedded validation at every evaluation (classification; "
                     "a domain classifier fitted per evaluation: seconds for 100-d features, minutes for DANN's 768-d convolutional features)"),
        click.option("--swad", is_flag=True, help="SWAD: average the weights over the valley of the source-validation "
                     "loss (Cha et al. 2021); the average is the run's last record and its selected model"),
        click.option("--sync-bn", is_flag=True, help="under torchrun (--devices N): batch-norm statistics over every "
                     "process's images, not each process's own"),
        click.option("--compile", is_flag=True, help="torch.compile the networks (worth it on a GPU for long runs; the "
                     "first steps wait for the compiler)"),
        click.option("--protocol", type=click.Choice(["dabench", "paper"]), default="dabench", show_default=True,
                     help="dabench: held-out source val, target val and test; paper: train on everything, test on the "
                          "target's official test split (Cityscapes val), last-step selection only"),
        click.option("--setting", type=click.Choice(["uda", "dg"]), default="uda", show_default=True,
                     help="uda: unlabelled target images in training; dg: domain generalisation, no target image "
                          "in training (train on several sources: --src a,b,c)"),
    ]
    for option in reversed(options):
        f = option(f)
    return f


LAUNCH_OPTIONS = ("launcher", "slurm", "partition", "gpus_per_job", "time_min", "account", "array_parallelism",
                  "ray_address", "dry_run")


def _launch_options(f):
    options = [
        click.option("--launcher", type=click.Choice(["local", "submitit", "ray"]), default="local", show_default=True,
                     help="local: processes here (--jobs); submitit: one Slurm job per run (pip install "
                          "'dabench[slurm]'); ray: tasks on a Ray cluster (pip install 'dabench[ray]')"),
        click.option("--partition", default=None, help="submitit: the Slurm partition"),
        click.option("--gpus-per-job", type=int, default=None, help="submitit: GPUs per job; ray: GPUs per run "
                     "(default 1 where the cluster has GPUs)"),
        click.option("--time", "time_min", type=int, default=None, help="submitit: each job's time limit, minutes"),
        click.option("--account", default=None, help="submitit: the Slurm account"),
        click.option("--array-parallelism", type=int, default=None, help="submitit: at most this many jobs at once"),
        click.option("--slurm", multiple=True, metavar="KEY=VALUE",
                     help="submitit: any other parameter it passes to sbatch (e.g. --slurm qos=high --slurm "
                          "mem_gb=64); cluster=local runs the jobs as local processes"),
        click.option("--ray-address", default=None, help="ray: the cluster's address (default: a local Ray instance)"),
        click.option("--dry-run", is_flag=True, help="print the plan (runs to do, runs done) and the device-hours "
                     "it needs, from measured per-step times; run nothing"),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _launcher(opts: dict, jobs: int):
    from dabench.sweeping.launchers import Launcher

    slurm = {}
    for item in opts["slurm"]:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DabenchError(f"--slurm expects key=value (for example --slurm qos=high), got '{item}'.")
        slurm[key.strip()] = int(value) if value.strip().isdigit() else value.strip()
    for key, name in (("partition", "partition"), ("gpus_per_job", "gpus_per_node"), ("time_min", "timeout_min"),
                      ("account", "account"), ("array_parallelism", "array_parallelism")):
        if opts[key] is not None:
            slurm[name] = opts[key]
    gpus = opts["gpus_per_job"] if opts["launcher"] == "ray" else None
    return Launcher(opts["launcher"], jobs=jobs, slurm=slurm, ray_address=opts["ray_address"], gpus_per_run=gpus)


@main.command()
@click.option("--algo", default=None, help="algorithm name (see: dabench list algorithms)")
@click.option("--src", default=None, help="source domain, e.g. syndigits, folder:PATH; several: a,b,c (one "
              "minibatch of each per step)")
@click.option("--tgt", default=None, help="target domain, e.g. uci-digits, office31:webcam")
@click.option("--from", "from_run", type=click.Path(), default=None,
              help="repeat a recorded run: its folder (or config.json); same options, hyperparameters and seed, in a "
                   "run folder under --out; only --out, --data-root, --device, --workers, --log, --resume, --overwrite "
                   "may be given with it")
@click.option("--tgt-labeled", default="0", show_default=True,
              help="labelled target images for semi-/supervised DA: a number, or 'all'")
@click.option("--seed", type=int, default=0, show_default=True,
              help="the run's seed: the network's initialisation and every batch (a function of seed and step)")
@_run_options
@click.option("--out", type=click.Path(), default="runs", show_default=True, help="folder for run folders")
@click.option("--resume", is_flag=True, help="continue the unfinished run of this exact config")
@click.option("--overwrite", is_flag=True, help="delete an existing run of this config and start again")
@click.option("--devices", type=int, default=1, show_default=True,
              help="train on N processes with torchrun, one GPU each (with --device cpu: N CPU processes): the "
                   "same run, its batches split over them")
def run(algo, src, tgt, from_run, tgt_labeled, seed, backbone, steps, eval_every, hparam, data_root, device, precision,
        image_size, pretrained, channels_last, workers, log, dev, swad, sync_bn, compile, protocol, setting, out, resume,
        overwrite, devices):
    """Train one algorithm on one source -> target pair and evaluate it (or repeat a recorded run: --from)."""
    import os

    from dabench import distributed
    from dabench.progress import make_reporter
    from dabench.runner import RunConfig, from_record, resolve_device, run as run_api

    if devices < 1:
        raise DabenchError(f"--devices must be 1 or more, got {devices}.")
    if from_run is not None:
        ctx = click.get_current_context()
        machine = {"from_run", "out", "data_root", "device", "workers", "log", "resume", "overwrite", "devices"}
        typed = sorted(n for n in ctx.params if n not in machine
                       and ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE)
        if typed:
            raise DabenchError(f"--from repeats the recorded run with its own options; {', '.join('--' + n.replace('_', '-') for n in typed)} "
                               "would change it. Give only --out, --data-root, --device, --workers, --log, --resume or "
                               "--overwrite with --from, or start a new run without --from.")
        cfg, notes = from_record(from_run, out=out, data_root=data_root, device=device, workers=workers, log=log,
                                 resume=resume, overwrite=overwrite)
        for note in notes:
            err_console.print(f"[yellow]warning:[/] {note}.", soft_wrap=True)
        algo, src, tgt = cfg.algo, cfg.src, cfg.tgt
    elif not (algo and src and tgt):
        raise DabenchError("Give --algo, --src and --tgt (see: dabench list), or --from RUN_FOLDER to repeat a run.")
    if devices > 1 and "WORLD_SIZE" not in os.environ:
        if resolve_device(cfg.device if from_run is not None else device).type == "cuda":
            distributed.check_gpus(devices)
        _torchrun(devices)

    cfg = cfg if from_run is not None else RunConfig(algo=algo, src=src, tgt=tgt, backbone=backbone, tgt_labeled=_budget(tgt_labeled), steps=steps,
                    eval_every=eval_every, seed=seed, overrides=_parse_h(hparam), data_root=data_root, out=out,
                    device=device, precision=precision, image_size=image_size, pretrained=pretrained,
                    channels_last=channels_last, workers=workers, log=log, dev=dev, swad=swad, sync_bn=sync_bn, compile=compile, protocol=protocol,
                    setting=setting, resume=resume, overwrite=overwrite)
    result = run_api(cfg, reporter=make_reporter(err_console, title=f"{algo} {src} -> {tgt}"))
    if not distributed.is_main():
        return  # rank 0 prints
    if result.already_done:
        err_console.print("This exact config already finished; showing its results (use --overwrite to run it again).")
    console.print(_result_table(result))
    if task_of(result.config["task"]).per_class:
        console.print(_iou_table(result))
    console.print(f"run folder: {result.run_dir}")


def _torchrun(devices: int) -> None:
    """``dabench run --devices N ...`` is ``torchrun --standalone --nproc-per-node N -m dabench run ...``."""
    import subprocess

    argv, skip = [], False
    for i, a in enumerate(sys.argv[1:]):
        if skip:
            skip = False
        elif a == "--devices":
            skip = True
        elif not a.startswith("--devices="):
            argv.append(a)
    import os

    from dabench.distributed import die_with_parent

    parent = os.getpid()
    # torchrun's agent and, through it, every worker end with this process (no orphans training on);
    # the lock on the run folder is rank 0's, so it goes with them.
    code = subprocess.call([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}",
                            "-m", "dabench", *argv], env=os.environ | {"DABENCH_PARENT": str(parent)},
                           preexec_fn=lambda: die_with_parent(parent))
    sys.exit(code)


def _result_table(result) -> Table:
    from dabench.results.selection import choose, protocol_methods

    metric, protocol = result.config["metric"], result.config.get("protocol", "dabench")
    title = f"{result.config['algo']}: {result.config['src']} -> {result.config['tgt']} ({metric})"
    table = Table(title=title + ("" if protocol == "dabench" else f", {protocol} protocol"))
    for col in ("model selection", "step", f"src-val {metric} (%)", f"tgt-test {metric} (%)"):
        table.add_column(col, justify="right" if col != "model selection" else "left")
    for method in protocol_methods(protocol):
        if method.oracle or not method.applies(result.records):
            continue  # the printed summary never selects with target labels; source-val (the tables') leads
        rec = choose(method, result.records, metric)
        src = rec.get("src-val", {}).get(metric)
        table.add_row(method.name, str(rec["step"]), "-" if src is None else f"{100 * src:.1f}",
                      f"{100 * rec['tgt-test'][metric]:.1f}")
    return table


def _iou_table(result) -> Table:
    """Per-class target-test IoU (%) of the source-val choice (last under the paper protocol), as the papers print it."""
    from dabench.results.selection import choose

    method = "last" if result.config.get("protocol") == "paper" else "source-val"
    rec = choose(method, result.records, result.config["metric"])
    classes, iou = result.config["classes"], rec["tgt-test"]["iou"]
    table = Table(title=f"per-class target-test IoU (%), step {rec['step']} ({method} choice)")
    for name in [*classes, "mIoU"]:
        table.add_column(name, justify="right")
    table.add_row(*("-" if v is None else f"{100 * v:.1f}" for v in iou), f"{100 * rec['tgt-test']['miou']:.1f}")
    return table


@main.command(name="list")
@click.argument("kind", required=False, type=click.Choice(["algorithms", "datasets", "backbones", "translators", "groups"]))
@click.argument("name", required=False)
def list_(kind, name):
    """Show the registered plugins (built-in and installed): name, where the code lives, task, description.
    `dabench list algorithms NAME`: one algorithm whole, each hyperparameter's meaning, default and search range."""
    from dabench.registry import REGISTRIES, describe, settings_of

    if name is not None:
        if kind != "algorithms":
            raise DabenchError(f"`dabench list {kind or ''} {name}`: details are shown for algorithms; try "
                               f"`dabench list algorithms {name}`.")
        return _algorithm_detail(name)
    for kind_ in [kind] if kind else list(REGISTRIES):
        reg = REGISTRIES[kind_]
        table = Table(title=kind_, title_justify="left", show_lines=kind_ == "algorithms")
        table.add_column("name", style="bold", no_wrap=True)
        table.add_column("task" if kind_ != "translators" else "kind", max_width=14)
        if kind_ == "algorithms":
            table.add_column("runs in", max_width=12)
        table.add_column("description", ratio=1, overflow="fold")
        for plugin_name in reg.names():
            try:
                obj = reg.get(plugin_name)
            except DabenchError as exc:  # one broken plugin must not hide the others
                table.add_row(plugin_name, "?", *([""] if kind_ == "algorithms" else []),
                              f"[red]cannot be loaded:[/] {escape(str(exc))}")
                continue
            where = f"\n[dim]{escape(reg.where(plugin_name))}[/]"
            if kind_ == "algorithms":
                table.add_row(plugin_name, obj.task, escape(settings_of(obj)), escape(obj.description()) + where)
            elif kind_ == "translators":
                table.add_row(plugin_name, "trainable" if obj.trainable else "fixed", escape(describe(obj)) + where)
            elif kind_ == "groups":
                table.add_row(plugin_name, obj.task, escape(f"{obj.description}: {', '.join(obj.members)}") + where)
            else:
                table.add_row(plugin_name, getattr(obj, "task", "any"), escape(describe(obj)) + where)
        console.print(table)
        if kind_ == "algorithms":
            console.print("`dabench list algorithms NAME` shows one whole: each hyperparameter's meaning, default "
                          "(per kind of data where the authors' differ) and search range.", soft_wrap=True)


def _algorithm_detail(name: str) -> None:
    import inspect

    from dabench.hparams import REGIMES
    from dabench.registry import REGISTRIES, settings_of

    reg = REGISTRIES["algorithms"]
    obj = reg.get(name)
    console.print(f"[bold]{escape(name)}[/]  {escape(reg.where(name))}", soft_wrap=True)
    console.print(f"task: {obj.task}; runs in: {settings_of(obj)}", soft_wrap=True)
    console.print(escape(inspect.cleandoc(obj.__doc__ or "")), soft_wrap=True)
    for task in list(TASKS) if obj.task == "any" else [obj.task]:
        space = obj.space(task)
        regimes = list(REGIMES) if any(p.regimes for p in space.values()) else []
        table = Table(title=f"hyperparameters{f' on {task}' if obj.task == 'any' else ''} (-H NAME=VALUE)",
                      title_justify="left")
        table.add_column("name", style="bold", no_wrap=True)
        for r in regimes or ["default"]:
            table.add_column(r if not regimes else f"default: {r}", overflow="fold")
        table.add_column("search range")
        table.add_column("meaning", ratio=1)
        for key in sorted(space):
            values = [str(obj.space(task, r)[key].default) for r in regimes] or [str(space[key].default)]
            p = space[key]
            search = str(p.search) if p.search else "not searched"
            meaning = p.help + (f" (one of {', '.join(map(str, p.choices))})" if p.choices else "")
            table.add_row(key, *map(escape, values), escape(search), escape(meaning))
        console.print(table)
        if regimes:
            console.print("digits: the digit CNN trained from scratch; imagenet: any other backbone "
                          "(the backbone decides, and config.json records it as regime).", soft_wrap=True)


@main.command()
@click.option("--algos", required=True, help="comma-separated algorithm names")
@click.option("--src", default=None, help="source domain (several: a,b,c); not with --dg")
@click.option("--tgt", default=None, help="target domain; not with --dg")
@click.option("--dg", default=None, help="domain generalisation, leave one domain out: a group (see 'dabench list "
              "groups', e.g. digits4) or a list a,b,c; each domain is held out in turn, the others train (with "
              "--setting uda: multi-source DA, the held-out domain's unlabelled images in training)")
@click.option("--lodo", is_flag=True, help="with --dg: also the runs leave-one-domain-out model selection validates "
              "with (each held-out domain x each other domain as validation: n^2 runs per config instead of n)")
@click.option("--seeds", default="3", show_default=True, help="a count (3 -> seeds 0,1,2) or a list '0,4,7' (one seed: '4,')")
@click.option("--tgt-labeled", default="0", show_default=True, help="labelled target budgets, comma-separated, e.g. 0,100,all")
@click.option("--hparam-samples", type=int, default=1, show_default=True, help="random-search samples per config (0 = defaults)")
@_run_options
@click.option("--out", type=click.Path(), default="runs", show_default=True, help="folder for run folders")
@click.option("--jobs", type=int, default=1, show_default=True, help="runs in parallel processes")
@click.option("--debug", is_flag=True, help="print each failed run's full Python traceback")
@_launch_options
def sweep(algos, src, tgt, dg, lodo, seeds, tgt_labeled, hparam_samples, out, jobs, debug, **run_options):
    """Run every algorithm x budget x seed x hyperparameter sample; skip finished runs."""
    if dg is not None:
        given = click.get_current_context().get_parameter_source("setting") == click.core.ParameterSource.COMMANDLINE
        if src or tgt or tgt_labeled != "0":
            raise DabenchError("--dg holds each domain of the group out in turn and trains on the others: give it "
                               "without --src, --tgt and --tgt-labeled.")
        if not given:
            run_options["setting"] = "dg"  # --setting uda: multi-source DA, each held-out domain the target
        elif lodo and run_options["setting"] == "uda":
            raise DabenchError("--lodo is domain generalisation's leave-one-domain-out selection; with --setting uda "
                               "the target's own unlabelled images are in training. Drop --lodo or --setting uda.")
        from dabench.sweeping.sweep import group_members

        dg = group_members(dg)
    elif lodo:
        raise DabenchError("--lodo adds the validation runs of a --dg sweep: give --dg too.")
    elif not (src and tgt):
        raise DabenchError("Give --src and --tgt (a pair), or --dg GROUP (leave one domain out).")
    outcomes = _run_all(algos, src, tgt, seeds, _budgets(tgt_labeled), hparam_samples, out, jobs, run_options, dg, lodo)
    bad = [o for o in outcomes if o.status in ("failed", "invalid")]
    done = sum(o.status == "done" for o in outcomes)
    skipped = sum(o.status == "skipped" for o in outcomes)
    held = [o for o in outcomes if o.status == "held"]
    console.print(f"sweep: {done} finished, {skipped} already done, " + (f"{len(held)} left to the process training "
                  "them, " if held else "") + f"{len(bad)} failed")
    for o in bad:
        where = f" (log: {o.log})" if o.log else " (--debug prints its traceback)" if o.detail and not debug else ""
        err_console.print(f"[red]{o.status}[/] {o.config.algo} seed {o.config.seed}: {escape(o.message)}{where}",
                          soft_wrap=True)
        if debug and o.detail:
            err_console.print(escape(o.detail), highlight=False, soft_wrap=True)
    if bad:
        sys.exit(1)


def _run_all(algos: str, src: str | None, tgt: str | None, seeds: str, budgets: list, hparam_samples: int, out: str,
             jobs: int, run_options: dict, dg: tuple | None = None, lodo: bool = False) -> list:
    """What sweep and curve share: plan every algorithm x budget x seed x sample, run them (finished
    runs skipped) with the chosen launcher, print one line per run; returns the outcomes."""
    from dabench.sweeping.launchers import launch, require
    from dabench.runner import RunConfig
    from dabench.sweeping.sweep import plan, plan_dg

    seed_list = _ints(seeds, "--seeds")
    seed_list = list(range(seed_list[0])) if "," not in seeds else list(dict.fromkeys(seed_list))  # 0,0: one run
    if not seed_list:
        raise DabenchError(f"--seeds {seeds.strip()}: a count of seeds must be at least 1 (3 -> seeds 0,1,2). For "
                           f"seed {seeds.strip()} alone, give it as a list: --seeds {seeds.strip()},")
    if hparam_samples < 1 or jobs < 1:
        raise DabenchError("--seeds, --hparam-samples and --jobs must be at least 1.")
    options = dict(run_options)
    launch_opts = {k: options.pop(k) for k in LAUNCH_OPTIONS}
    launcher = _launcher(launch_opts, jobs)
    require(launcher.name)
    base = RunConfig(algo="", src=src, tgt=tgt, overrides=_parse_h(options.pop("hparam")), out=out, **options)
    algo_list = [a.strip() for a in algos.split(",") if a.strip()]
    if dg:
        configs, notes = plan_dg(algo_list, seed_list, hparam_samples, base, dg, lodo, base.setting)
    else:
        configs, notes = plan(algo_list, seed_list, budgets, hparam_samples, base)
    if not configs:
        raise DabenchError("The sweep plans no run: " + " ".join(notes or ["no configuration was left."])
                           + " Check the domains (--dg, --src, --tgt).")
    for note in notes:
        err_console.print(f"[yellow]note:[/] {note}")
    err_console.print(f"{len(configs)} runs -> {out}")

    def show(o, i, n):
        c = o.config
        label = (f"[{i}/{n}] {c.algo} " + (f"{c.src} -> {c.tgt}" if dg else f"N={c.tgt_labeled}") + f" seed={c.seed}"
                 + (f" hp={c.hparam_index}" if hparam_samples > 1 else ""))
        if o.status in ("done", "skipped"):
            err_console.print(f"{label}: {'finished' if o.status == 'done' else 'already done'}{_selected_text(o.run_dir)}"
                              f"  {o.run_dir}", soft_wrap=True, highlight=False)
        elif o.status == "held":
            err_console.print(f"{label}: [yellow]skipped[/]: {escape(o.message.splitlines()[0])}", soft_wrap=True)
        else:
            err_console.print(f"{label}: [red]{o.status}[/]: {escape(o.message.splitlines()[0])}", soft_wrap=True)

    if launch_opts["dry_run"]:
        _dry_run(configs)
        sys.exit(0)
    return launch(configs, launcher, on_outcome=show, progress=True)


def _selected_text(run_dir) -> str:
    """`` source-val step S: tgt-test X%`` (what the tables will show for this run), or "" when its
    records do not say."""
    from dabench.results.selection import TEST, choose, protocol_methods
    from dabench.runfolder import read_config, run_records

    try:
        config, records = read_config(Path(run_dir)), run_records(Path(run_dir))
        method = next(m for m in protocol_methods(config.get("protocol", "dabench")) if not m.oracle)
        rec, metric = choose(method, records, config["metric"]), config["metric"]
        return f" {method.name} step {rec['step']}: tgt-test {metric} {100 * rec[TEST][metric]:.1f}%"
    except Exception:  # noqa: BLE001 - a summary line never stops a sweep
        return ""


def _dry_run(configs: list) -> None:
    from dabench.sweeping.cost import estimate

    report = estimate(configs)
    table = Table(title=f"plan: {len(configs)} runs, {report.done} already done, {len(configs) - report.done} to run")
    for col in ("algorithm", "to run", "done", "s/step", "s/eval", "eval", "measured on", "hours"):
        table.add_column(col, justify="left" if col in ("algorithm", "measured on") else "right",
                         no_wrap=col in ("algorithm", "measured on"))
    for row in report.rows:
        table.add_row(row.algo, str(row.todo), str(row.done), f"{row.seconds_per_step:.3f}",
                      "-" if row.seconds_per_eval is None else f"{row.seconds_per_eval:.2f}",
                      "-" if row.eval_share is None else f"{100 * row.eval_share:.0f}%", row.source, f"{row.hours:.3f}")
    console.print(table)
    console.print(f"total: {report.hours:.3f} device-hours on {report.device} (training and evaluation, at the "
                  "measured rates; 'eval': the share of the time spent evaluating, which --eval-every sets)")


@main.command()
@click.option("--algos", required=True, help="comma-separated algorithm names")
@click.option("--src", required=True, help="source domain, e.g. gta5")
@click.option("--tgt", required=True, help="target domain, e.g. cityscapes (its labelled budgets are --tgt-labeled)")
@click.option("--tgt-labeled", required=True, help="labelled target budgets, comma-separated, e.g. 0,100,500,1000,all")
@click.option("--seeds", default="3", show_default=True, help="a count (3 -> seeds 0,1,2) or a list '0,4,7' (one seed: '4,')")
@click.option("--selection", type=click.Choice(["source-val", "target-oracle", "target-oracle-best", "last"]), default=None,
              help="model selection method for the cells (default: source-val; last under --protocol paper)")
@_run_options
@click.option("--out", type=click.Path(), default="runs", show_default=True, help="folder for run folders")
@click.option("--jobs", type=int, default=1, show_default=True, help="runs in parallel processes")
@click.option("--debug", is_flag=True, help="print each failed run's full Python traceback")
@_launch_options
def curve(algos, src, tgt, tgt_labeled, seeds, selection, out, jobs, debug, **run_options):
    """Data efficiency: every algorithm x budget x seed (finished runs skipped), as a table and a plot."""
    from collections import defaultdict

    from dabench.results.curve import build, write
    from dabench.runfolder import slug

    from dabench.results.selection import PROTOCOLS

    protocol = run_options["protocol"]
    selection = selection or ("last" if protocol == "paper" else "source-val")
    if selection not in PROTOCOLS[protocol]:
        raise DabenchError(f"--selection {selection} is not possible under --protocol {protocol}, which holds nothing out: "
                           f"use --selection {' or '.join(PROTOCOLS[protocol])}.")
    algo_list, budgets = [a.strip() for a in algos.split(",") if a.strip()], _budgets(tgt_labeled)
    outcomes = _run_all(algos, src, tgt, seeds, budgets, 1, out, jobs, run_options)
    failed = defaultdict(list)  # one line per algorithm, budget and message, naming its seeds
    for o in outcomes:
        if o.status in ("failed", "invalid"):
            failed[(o.status, o.config.algo, o.config.tgt_labeled, o.message)].append(str(o.config.seed))
            if debug and o.detail:
                err_console.print(escape(o.detail), highlight=False, soft_wrap=True)
    done, skipped = (sum(o.status == s for o in outcomes) for s in ("done", "skipped"))
    console.print(f"curve: {done} finished, {skipped} already done, {len(outcomes) - done - skipped} failed")
    for (status, algo, n, message), seeds_ in failed.items():
        err_console.print(f"[red]{status}[/] {algo} N={n} (seed {', '.join(seeds_)}): {escape(message)}", soft_wrap=True)

    result = build(src, tgt, [o.run_dir for o in outcomes if o.run_dir], algo_list, budgets, selection)
    table = Table(title=result.title, caption="mean ± std over seeds (change from the algorithm's 'all' value)")
    table.add_column("algorithm")
    for n in budgets:
        table.add_column(str(n), justify="right")
    for algo in algo_list:
        table.add_row(algo, *(result.text(algo, n) for n in budgets))
    console.print(table)
    for path in write(result, Path(out) / "curves", f"{slug(src)}_to_{slug(tgt)}"):
        console.print(f"wrote {path}")
    if failed:
        sys.exit(1)


@main.command()
@click.argument("path", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["markdown", "latex", "csv"]), default="markdown", show_default=True,
              help="markdown (GitHub tables), latex (booktabs) or csv (one long table)")
@click.option("--reference", default="erm", show_default=True,
              help="the algorithm every row is compared with (markdown: the difference and twice the larger std)")
@click.option("--per-seed", is_flag=True,
              help="markdown: each seed's value beside each mean, and a per-seed table under each DG table "
                   "(csv always has them)")
def leaderboard(path, fmt, reference, per_seed):
    """Tables of target-test results per model-selection method, read from run folders."""
    from dabench.results.leaderboard import leaderboard as board, render

    click.echo(render(board(Path(path)), fmt, reference, per_seed))


@main.command("export")
@click.argument("path", type=click.Path())
@click.argument("dest", type=click.Path())
@click.option("--steps", is_flag=True, help="also every step's losses (steps.jsonl), which the report's curves draw")
def export_cmd(path, dest, steps):
    """Copy a folder of runs without their weights: the records leaderboard and report read, to share."""
    from dabench.results.export import export

    done = export(path, dest, steps)
    console.print(f"exported {len(done.written)} runs to {dest}" + (f"; {len(done.same)} already there" if done.same else "")
                  + (f"; {len(done.unfinished)} unfinished runs left out" if done.unfinished else ""), soft_wrap=True)


@main.command()
@click.argument("path", type=click.Path())
@click.option("--out", type=click.Path(), default="report.html", show_default=True, help="the HTML file to write")
def report(path, out):
    """One HTML page of a folder of runs: tables, training curves, per-class scores, t-SNE pictures."""
    from dabench.results.report import report as write_report

    console.print(f"wrote {write_report(path, out)}", soft_wrap=True)


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--images", required=True, type=click.Path(), help="folder of images to predict")
@click.option("--out", type=click.Path(), default=None,
              help="folder for the predictions (default: the run folder's predictions/, which dabench report shows)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="where the model runs: auto (a GPU when there is one), cpu or cuda")
@click.option("--selection", type=click.Choice(["source-val", "last"]), default=None,
              help="which step's model: the one source-val selection chose, as the tables (default; last under "
                   "--protocol paper), or the last")
@click.option("--overwrite", is_flag=True, help="replace predictions already in --out")
def predict(run_dir, images, out, device, selection, overwrite):
    """Apply a run's model to a folder of images: coloured masks and overlays (segmentation) or a CSV."""
    from dabench.predict import predict as predict_api

    written = predict_api(run_dir, images, out, device, selection, overwrite)
    console.print(f"wrote {len(written)} files to {written[0].parent if written else out}", soft_wrap=True)


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--selection", type=click.Choice(["source-val", "last"]), default=None,
              help="the trained step to picture beside the start (default: source-val; last under --protocol paper)")
@click.option("--images", type=int, default=500, show_default=True, help="images per domain")
@click.option("--data-root", type=click.Path(), default=None, help="folder holding your data sets (default: $DABENCH_DATA)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="where the model runs: auto (a GPU when there is one), cpu or cuda")
def embed(run_dir, selection, images, data_root, device):
    """t-SNE of source and target features at the start and the selected step, as a PNG in the run folder."""
    from dabench.embed import embed as picture

    for path in picture(run_dir, selection=selection, images=images, data_root=data_root, device=device):
        console.print(f"wrote {path}", soft_wrap=True)


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--selection", type=click.Choice(["source-val", "last"]), default=None,
              help="the trained step to measure (default: source-val; last under --protocol paper)")
@click.option("--images", type=int, default=1000, show_default=True, help="images per domain")
@click.option("--data-root", type=click.Path(), default=None, help="folder holding your data sets (default: $DABENCH_DATA)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="where the model runs: auto (a GPU when there is one), cpu or cuda")
def divergence(run_dir, selection, images, data_root, device):
    """Proxy A-distance between source and target features, at the start and the selected step."""
    from dabench.divergence import divergence as measure

    report = measure(run_dir, selection=selection, images=images, data_root=data_root, device=device)
    table = Table(title=f"proxy A-distance, {report['images_per_domain']} images per domain "
                        f"({report['source']} vs {report['target']}; 0 = indistinguishable, 2 = separable)")
    for col in ("model", "step", "PAD", "95% interval", "domain classifier error"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for label, r in (("start (as built)", report["start"]), (f"selected ({report['selected']['selection']})",
                                                              report["selected"])):
        lo, hi = r["pad_95"]
        table.add_row(label, str(r["step"]), f"{r['pad']:.3f}", f"{lo:.3f} to {hi:.3f}", f"{r['error']:.3f}")
    console.print(table)
    start, sel = report["start"]["pad_95"], report["selected"]["pad_95"]
    apart = start[0] > sel[1] or sel[0] > start[1]
    console.print(("The intervals do not overlap: the selected model's features are measurably "
                   + ("closer" if report["selected"]["pad"] < report["start"]["pad"] else "further apart") + " across domains."
                   if apart else "The intervals overlap: at this many images the two PADs are not told apart.")
                  + " PAD is how well a linear classifier tells source from target features (2: perfectly); a "
                  "method can raise target accuracy while its features stay linearly separable, so read PAD "
                  "beside the accuracy, not for it.")


@main.group()
def datasets():
    """Inspect data sets."""


@datasets.command()
@click.argument("name")
@click.option("--data-root", type=click.Path(), default=None, help="folder holding your data sets (default: $DABENCH_DATA)")
def check(name, data_root):
    """Check that a data set's files are where dabench expects them, and count them."""
    from dabench.protocol import resolve_data_root, load_domain

    domain = load_domain(name, resolve_data_root(data_root))
    table = Table(title=f"{domain.name} ({domain.task})", title_justify="left")
    table.add_column("what")
    table.add_column("value")
    table.add_row("classes", f"{domain.num_classes}: {', '.join(domain.classes[:12])}{' ...' if domain.num_classes > 12 else ''}")
    table.add_row("train", str(len(domain.train)))
    table.add_row("test", str(len(domain.test)) if domain.test is not None else "none (held out of train by the protocol)")
    size = domain.image_size
    table.add_row("image size", f"{size} x {size} (square)" if isinstance(size, int) else
                  f"{size[0]} x {size[1]} (width x height)" if isinstance(size, (tuple, list)) else str(size))
    for k, v in domain.info.items():
        table.add_row(k, str(v))
    console.print(table)
    console.print("ok")


@datasets.command(name="prepare")
@click.argument("name")
@click.option("--data-root", type=click.Path(), default=None, help="folder holding your data sets (default: $DABENCH_DATA)")
@click.option("--image-size", type=int, default=None, help="the training height the runs will use (default: the data set's)")
@click.option("--workers", type=int, default=None, help="processes decoding in parallel (default: all CPUs)")
@click.option("--compression", type=click.IntRange(0, 9), default=0, show_default=True,
              help="PNG level of the images: 0 is fastest to read (1280x720: 2.6 MB each), 9 is smallest")
def prepare_(name, data_root, image_size, workers, compression):
    """Write a copy of a file-backed segmentation set resized to the training size, which runs with
    the same --data-root and --image-size then read instead of the originals (same items, bit for bit)."""
    import os

    from rich.progress import Progress

    from dabench.segdata import prepared
    from dabench.protocol import resolve_data_root, load_domain

    root = resolve_data_root(data_root)
    if root is None:
        raise DabenchError("dabench datasets prepare writes the copy under the data root: pass --data-root DIR (or set "
                           "DABENCH_DATA) to the folder that holds your data sets.")
    if image_size is not None and image_size <= 0:
        raise DabenchError(f"--image-size is the training height in pixels (a positive whole number), got {image_size}.")
    if workers is not None and workers < 1:
        raise DabenchError(f"--workers must be 1 or more, got {workers}.")
    domain = load_domain(name, root, image_size, prepared=False)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"preparing {domain.name}", total=prepared.count(domain))
        folder = prepared.prepare(domain, root, workers or os.cpu_count() or 1, lambda: bar.advance(task), compression)
    size = domain.image_size
    console.print(f"{domain.name}: {prepared.count(domain)} images at {size[0]}x{size[1]} written to {folder}. Runs with "
                  f"--data-root {root}" + (f" --image-size {image_size}" if image_size else "") + " now read them.")
