"""The notebook API: train, evaluate, predict, save and load, as the CLI does in a shell.

    import dabench
    run = dabench.fit("dann", src="syndigits", tgt="uci-digits", steps=500)      # trains, returns a Run
    print(run.evaluate("uci-digits"))                                            # {"acc": ...}
    run.save("dann.pt"); same = dabench.load("dann.pt"); same.predict(images)    # logits

``fit`` is ``dabench run``: the same RunConfig, the same run folder under ``runs/`` (or ``out``),
the same records, so a notebook run and a CLI run are one thing. Data is a data set name
(``"uci-digits"``, ``"folder:PATH"``), a ``Domain``, or arrays as skada and ADAPT take them:
``(X, y)`` labelled, ``X`` alone for unlabelled target images (``dabench.from_arrays`` reads them).

The model a ``Run`` holds is the one the tables report: the step source-val selection chose
(``selection="last"`` for the final step; under ``--protocol paper``, which holds nothing out,
the last step is the only one).
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dabench import runfolder
from dabench.data import CLASSIFICATION, Domain, as_uint8_images, from_arrays, resize_images, to_unit_range
from dabench.errors import DabenchError
from dabench.files import load_pt
from dabench.results.selection import PROTOCOLS, choose
from dabench.tasks import task_of

FORMAT = "dabench-run"  # what ``Run.save`` writes, so ``load`` can tell its files from other .pt files
KEPT = ("source-val", "last")  # the selections whose weights a run folder keeps


def _as_domain(data: Any, *, task: str | None = None, classes: list[str] | None = None) -> str | Domain:
    """A name or Domain as given; ``(X, y)`` or ``X`` made into a Domain."""
    if isinstance(data, (str, Domain)):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return from_arrays(data[0], data[1], classes=classes)
    if isinstance(data, (np.ndarray, torch.Tensor)):
        return from_arrays(data, None, classes=classes, task=task or CLASSIFICATION)
    raise DabenchError(f"Data must be a data set name (e.g. 'uci-digits', 'folder:PATH'), a dabench Domain, (images, "
                       f"labels) arrays or images alone; got {type(data).__name__}.")


def _task_of(src: str | Domain) -> str:
    if isinstance(src, Domain):
        return src.task
    from dabench.registry import Spec, datasets

    return getattr(datasets.get(Spec.parse(src).name), "task", CLASSIFICATION)


def fit(algo: str, src: Any, tgt: Any, *, out: str | Path | None = "runs", progress: bool = True, **options) -> "Run":
    """Train ``algo`` from ``src`` to ``tgt`` and return the trained ``Run``.

    Keyword options are ``RunConfig``'s, which mirror the CLI's: ``steps``, ``seed``, ``backbone``,
    ``overrides`` (a dict of hyperparameter values, as ``-H``), ``tgt_labeled``, ``device``, ``precision``, ``image_size``,
    ``pretrained``, ``protocol``, ``setting`` ("dg": domain generalisation), ``eval_every``, ``data_root``,
    ``resume``, ``overwrite``... Several sources: ``src=["a", "b"]`` (names, Domains or (images, labels)
    pairs), one minibatch of each per step.
    ``out=None`` writes the run folder to a new temporary folder. A config that already finished
    is not trained again (as ``dabench run``): pass ``overwrite=True`` for that."""
    from dabench.runner import RunConfig, run

    names = {f.name for f in dataclasses.fields(RunConfig)} - {"algo", "src", "tgt", "out"}
    unknown = sorted(set(options) - names - {"hparams"})  # hparams: 0.1's name of overrides (RunConfig warns)
    if unknown:
        raise DabenchError(f"fit() got unknown option(s) {', '.join(unknown)}. Options: {', '.join(sorted(names))}.")
    if isinstance(src, list) and src and all(isinstance(s, (str, Domain, tuple)) for s in src):
        src = [_as_domain(s) for s in src]  # several sources: names, Domains or (images, labels) each
    else:
        src = _as_domain(src)
    first = src[0] if isinstance(src, list) else src
    tgt = _as_domain(tgt, task=_task_of(first), classes=first.classes if isinstance(first, Domain) else None)
    out = Path(tempfile.mkdtemp(prefix="dabench-runs-")) if out is None else Path(out)
    reporter = None
    if progress:
        from dabench.progress import make_reporter

        reporter = make_reporter(title=f"{algo} {_name(src)} -> {_name(tgt)}")
    result = run(RunConfig(algo=algo, src=src, tgt=tgt, out=str(out), **options), reporter=reporter)
    return load(result.run_dir, device=options.get("device", "auto"))


def _name(data: str | Domain | list) -> str:
    if isinstance(data, list):
        return ",".join(map(_name, data))
    return data.name if isinstance(data, Domain) else data


def _weights(run_dir: Path, config: dict, records: list[dict], selection: str) -> tuple[dict, int]:
    """(model state, step) of ``selection`` in a run folder."""
    if selection == "last":
        ckpt = run_dir / runfolder.CHECKPOINT
        if not ckpt.is_file():
            raise DabenchError(f"{run_dir} has no checkpoint.pt: it is not a run folder, or its run never got to a step.")
        state = load_pt(ckpt, "checkpoint")
        return state["model"], int(state["step"])
    chosen = choose(selection, records, config["metric"])["step"]
    path = run_dir / runfolder.SELECTED
    if not path.is_file():
        raise DabenchError(f"{run_dir} keeps no selected.pt (it was made before dabench kept the weights of the "
                           "source-val step): load it with selection='last' (--selection last), or run it again.")
    state = load_pt(path, "weights file")
    if int(state["step"]) != chosen:
        raise DabenchError(f"{path} holds step {state['step']}, but source-val selection over results.jsonl chooses step "
                           f"{chosen}: the folder was changed after its run. Run it again (--overwrite).")
    return state["model"], chosen


def load(path: str | Path, *, selection: str | None = None, device: str = "auto") -> "Run":
    """A trained ``Run`` from a run folder or a file ``Run.save`` wrote. A run folder gives the step
    ``selection`` chooses: source-val by default (last under --protocol paper), or last."""
    from dabench.runner import resolve_device

    path = Path(path).expanduser()
    if path.is_dir():
        if not runfolder.is_started(path):
            raise DabenchError(f"{path} is not a run folder: it has no config.json (`dabench run` prints the run folder "
                               "at its end; folders look like runs/<src>_to_<tgt>/<algo>/seed0-1a2b3c4d).")
        config = runfolder.read_config(path)
        records = runfolder.run_records(path, strict=True)
        protocol = config.get("protocol", "dabench")
        selection = selection or PROTOCOLS[protocol][0]
        if selection not in KEPT or selection not in PROTOCOLS[protocol]:
            possible = [s for s in KEPT if s in PROTOCOLS[protocol]]
            raise DabenchError(f"selection '{selection}': a {protocol}-protocol run folder keeps the weights of "
                               f"{' and '.join(possible)} only.")
        state, step = _weights(path, config, records, selection)
        run_dir: Path | None = path
    elif path.is_file():
        saved = load_pt(path, "file Run.save wrote")
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise DabenchError(f"{path} is not a file Run.save wrote (a checkpoint.pt? load its run folder instead).")
        if selection not in (None, saved["selection"]):
            raise DabenchError(f"{path} holds the {saved['selection']} step only; load the run folder for '{selection}'.")
        config, records, state, step, selection = (saved[k] for k in ("config", "records", "model", "step", "selection"))
        run_dir = Path(saved["run_dir"]) if saved.get("run_dir") else None
    else:
        raise DabenchError(f"{path} does not exist: give a run folder or a file Run.save wrote.")
    return Run(config, records, state, step, selection, run_dir, resolve_device(device))


class Run:
    """A trained model with the config and records of the run that made it."""

    def __init__(self, config: dict, records: list[dict], state: dict, step: int, selection: str,
                 run_dir: Path | None, device: torch.device):
        from dabench.runner import build_algorithm

        self.config, self.records, self.step, self.selection = config, records, step, selection
        self.run_dir, self.device = run_dir, device
        from dabench.trainer import rng_state, set_rng_state

        caller = rng_state()  # building seeds the generators as the run did; the caller's stay as they were
        try:
            self.algorithm = build_algorithm(config, task_of(self.task).network_size(self.input_size),
                                             device)
        finally:
            set_rng_state(caller)
        try:
            self.algorithm.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as exc:  # another algorithm's or backbone's weights
            first = str(exc).strip().splitlines()[0]
            raise DabenchError(f"The weights do not fit the network the config describes ({config.get('algo')} on "
                               f"{config.get('backbone')}): {first[:200]}. The file was changed or comes from another "
                               "run; load the run folder it came from.") from None
        self.algorithm.eval()

    def __repr__(self) -> str:
        return (f"Run({self.config['algo']}: {self.config['src']} -> {self.config['tgt']}, seed {self.config['seed']}, "
                f"step {self.step} ({self.selection}), {self.run_dir or 'loaded from a file'})")

    @property
    def task(self) -> str:
        return self.config["task"]

    @property
    def classes(self) -> list[str]:
        return self.config["classes"]

    @property
    def input_size(self) -> tuple[int, int]:
        """(W, H) the target images were fed at."""
        w, h = (int(v) for v in str(self.config["eval_size"]).split("x"))
        return w, h

    @property
    def result(self) -> dict:
        """The evaluation record of the step this model is (its ``tgt-test`` is the table's number)."""
        return next((r for r in self.records if r["step"] == self.step), {})

    def _tensor(self, images) -> tuple[torch.Tensor, tuple[int, int]]:
        """User images -> (the network's input: [-1, 1] floats at the run's input size, their own (H, W))."""
        x = as_uint8_images(images)
        own = tuple(x.shape[-2:])
        if task_of(self.task).one_size and own[0] != own[1]:  # as fit refuses them: no silent stretching
            raise DabenchError(f"Classification images must be square, got {own[1]}x{own[0]}. Crop or resize them as "
                               "the training images were.")
        return to_unit_range(resize_images(x, self.input_size, task_of(self.task).resample)), own

    @torch.no_grad()
    def predict(self, images, batch_size: int = 256) -> torch.Tensor:
        """Logits for images (arrays as ``dabench.from_arrays`` reads them): (N, K) for
        classification, (N, K, H, W) at the images' own size for segmentation."""
        from dabench.layers import upsample
        from dabench.algorithm import autocast

        x, size = self._tensor(images)
        out = []
        for part in x.split(batch_size):
            with autocast(self.device, self.config.get("precision", "fp32")):
                logits = self.algorithm.predict(part.to(self.device)).float()
            if logits.ndim == 4:
                logits = upsample(logits, size)
            out.append(logits.cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def evaluate(self, data, *, data_root: str | Path | None = None) -> dict:
        """Metrics of this model on ``data``: the run's target (by name) is scored on the run's own
        test split, so the number equals the table's; another data set on its official test split,
        or all its images when it has none; ``(X, y)`` arrays on all of them."""
        from dabench.protocol import resolve_data_root, load_domain, test_split
        from dabench.trainer import evaluate

        if isinstance(data, (np.ndarray, torch.Tensor)):
            raise DabenchError("evaluate needs labels: pass (images, labels).")
        domain = _as_domain(data, classes=self.classes)
        if not isinstance(domain, Domain):
            root = resolve_data_root(data_root)
            size = task_of(self.task).load_size(self.config.get("image_size"), self.input_size)
            domain = load_domain(domain, root, size)
        if domain.classes != self.classes:
            raise DabenchError(f"{domain.name} has other classes than this run ({len(domain.classes)} vs "
                               f"{len(self.classes)}): a model is scored on its own label space.")
        if domain.name == self.config["tgt"]:
            dataset = test_split(domain, self.config.get("protocol", "dabench"))
        elif domain.test is not None:
            dataset = domain.test
        else:
            dataset = domain.train
        if task_of(self.task).one_size and domain.image_size != self.input_size[0]:
            dataset = _Resized(dataset, self.input_size[0])
        return evaluate(self.algorithm, dataset, self.task, len(self.classes), self.device,
                        self.config.get("precision", "fp32"), task_of(self.task).eval_batch, self.config.get("channels_last", False))

    def save(self, path: str | Path) -> Path:
        """One file with the weights of this model, its config and records: ``dabench.load`` reads it."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"format": FORMAT, "config": self.config, "records": self.records, "step": self.step,
                    "selection": self.selection, "run_dir": str(self.run_dir) if self.run_dir else None,
                    "model": self.algorithm.state_dict()}, tmp)
        tmp.replace(path)
        return path


class _Resized(torch.utils.data.Dataset):
    """Classification images of another size, resized as ``Run.predict`` resizes them."""

    def __init__(self, base, size: int):
        self.base, self.size = base, size

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        return resize_images(x, (self.size, self.size), task_of(CLASSIFICATION).resample), y
