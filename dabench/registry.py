"""Name -> plugin registries for algorithms, datasets, backbones, translators and domain groups.

Plugins are found through entry points in the groups ``dabench.<kind>s`` (pyproject.toml for the
built-in ones, so the third-party path is the everyday path), loaded on first use. A plugin says
its own name where it is defined: an algorithm or translator class by ``name = "dann"``, a data
set or backbone factory by ``@plugin("mnist5k", ...)``, a domain group by ``DomainGroup(...,
name="digits4")``; an entry point whose plugin calls itself otherwise is refused, so a name found
in ``dabench list`` is a name found in the code. ``dabench list`` prints where each plugin lives
(``module:object``). ``Registry.register`` adds one in-process (tests, notebooks).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Iterator

from dabench.errors import DabenchError


@dataclass(frozen=True)
class Spec:
    """A plugin name with an optional argument: ``folder:/data/mine`` -> ("folder", "/data/mine")."""

    name: str
    arg: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Spec":
        name, sep, arg = text.partition(":")
        return cls(name.strip(), arg if sep else None)

    def __str__(self) -> str:
        return self.name if self.arg is None else f"{self.name}:{self.arg}"


class Registry:
    """One kind of plugin. ``get(name)`` loads entry points lazily, on first need."""

    def __init__(self, kind: str):
        self.kind = kind  # "algorithm", "dataset", ...
        self.group = f"dabench.{kind}s"
        self._items: dict[str, Any] = {}
        self._registered: set[str] = set()  # added by ``register``, not by an entry point
        self._entry_points: dict[str, Any] | None = None

    def register(self, name: str) -> Callable[[Any], Any]:
        """Add ``obj`` under ``name`` in this process (a test's toy data set, a notebook's algorithm)."""

        def decorate(obj: Any) -> Any:
            obj.name = name
            self._items[name] = obj
            self._registered.add(name)
            return obj

        return decorate

    def _discovered(self) -> dict[str, Any]:
        if self._entry_points is None:
            self._entry_points = {ep.name: ep for ep in entry_points(group=self.group)}
        return self._entry_points

    def names(self) -> list[str]:
        return sorted(set(self._items) | set(self._discovered()))

    def get(self, name: str) -> Any:
        if name not in self._items:
            ep = self._discovered().get(name)
            if ep is None:
                raise DabenchError(self._unknown(name))
            try:
                obj = ep.load()
            except Exception as exc:  # a broken third-party plugin must not look like a typo
                raise DabenchError(
                    f"The {self.kind} plugin '{name}' is installed (entry point '{ep.value}' in group "
                    f"'{self.group}') but failed to import: {type(exc).__name__}: {exc}. "
                    "Fix or uninstall the package that provides it."
                ) from exc
            declared = getattr(obj, "name", None)
            if declared is not None and declared != name:
                raise DabenchError(
                    f"The {self.kind} entry point '{name}' (in group '{self.group}') loads {ep.value}, which calls "
                    f"itself '{declared}'. Make the two names agree (the entry point's name is what users type)."
                )
            self._items[name] = obj
        return self._items[name]

    def where(self, name: str) -> str:
        """Where the plugin ``name`` is defined, as ``module:object`` (an entry point's value)."""
        if name not in self._registered and (ep := self._discovered().get(name)) is not None:
            return ep.value
        obj = self.get(name)
        return f"{obj.__module__}:{obj.__qualname__}"

    def items(self) -> Iterator[tuple[str, Any]]:
        for name in self.names():
            yield name, self.get(name)

    def _unknown(self, name: str) -> str:
        known = self.names()
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return (
            f"Unknown {self.kind} '{name}'.{hint} Known {self.kind}s: {', '.join(known) or 'none'}. "
            f"Run 'dabench list {self.kind}s' to see them with descriptions."
        )


algorithms = Registry("algorithm")
datasets = Registry("dataset")
backbones = Registry("backbone")
translators = Registry("translator")
groups = Registry("group")  # domain groups (DomainGroup): the domains a leave-one-domain-out sweep holds out in turn

REGISTRIES = {"algorithms": algorithms, "datasets": datasets, "backbones": backbones, "translators": translators,
              "groups": groups}


@dataclass(frozen=True)
class DomainGroup:
    """Domains of one label space that a domain-generalisation sweep (``dabench sweep --dg NAME``)
    holds out in turn, training on the others. Register one with an entry point in the group
    ``dabench.groups`` (value: a DomainGroup object)."""

    members: tuple[str, ...]
    description: str
    task: str = "classification"
    name: str | None = None  # the name it is registered under


def plugin(name: str | None = None, *, task: str, description: str | None = None, images_of: str | None = None,
           generated: bool = False, regime: str | None = None, path_arg: bool = False) -> Callable[[Any], Any]:
    """Tag a dataset or backbone factory with the name it is registered under, its task
    ("classification", "segmentation" or "any") and a one-line description for ``dabench list``
    (default: the docstring's first line).
    Two facts about a data set's images, so no run trains on the images it tests on:
    ``images_of``: the data set whose images this one transforms (``digits-m`` recolours
    ``uci-digits``); ``generated``: a generator whose argument is only how many images it draws
    (``syndigits:N``), so every argument gives the same domain. Other data sets' arguments name
    other images (``folder:PATH``, ``pacs:photo``). A backbone's ``regime``: which of the authors'
    settings its runs take their defaults from (``dabench.hparams.REGIMES``; default ``imagenet``).
    ``path_arg``: the data set's argument is a path (``folder:PATH``); a run records it resolved, so
    the same words typed in another directory name another run."""

    def decorate(obj: Any) -> Any:
        if name is not None:
            obj.name = name
        obj.task = task
        if path_arg:
            obj.path_arg = True
        if regime:
            obj.regime = regime
        if description:
            obj.description = description
        if images_of:
            obj.images_of = images_of
        if generated:
            obj.generated = True
        return obj

    return decorate


def resolved_name(name: str) -> str:
    """``name`` with a path argument made absolute (``folder:data/mine`` -> ``folder:/home/me/data/mine``);
    any other name as it is."""
    spec = Spec.parse(name)
    if spec.arg and spec.name in datasets.names() and getattr(datasets.get(spec.name), "path_arg", False):
        return f"{spec.name}:{Path(spec.arg).expanduser().resolve()}"
    return name


def image_origin(name: str) -> str:
    """Where the images of ``name`` come from: the data set it transforms (``digits-m`` ->
    ``uci-digits``), the generator without its count (``syndigits:500`` -> ``syndigits``), else the
    name with its argument (``pacs:photo``, ``folder:/data/a``: other arguments, other images)."""
    spec = Spec.parse(name)
    try:
        factory = datasets.get(spec.name)
    except DabenchError:
        return str(spec)
    if images_of := getattr(factory, "images_of", None):
        return images_of
    if getattr(factory, "generated", False) or not spec.arg:
        return spec.name
    path = Path(spec.arg).expanduser()
    return f"{spec.name}:{path.resolve() if path.exists() else spec.arg}"  # one folder however it is written


def shared_images(sources: list[str], target: str) -> list[str]:
    """The sources whose images are the target's (the same data set, or one made from it)."""
    origin = image_origin(target)
    return [s for s in sources if image_origin(s) == origin]


def describe(obj: Any) -> str:
    text = getattr(obj, "description", None) or (obj.__doc__ or "").strip()
    if callable(text):  # a plugin class's description() classmethod
        text = text()
    return " ".join(text.strip().split("\n\n")[0].split()) if text else ""  # the first paragraph, whole


def settings_of(algo: Any) -> str:
    """Where an algorithm runs, in words: UDA and DG, DG only, or with target labels."""
    labels = {"required": "SSDA (needs --tgt-labeled N)", "all": "all target labels (an upper bound)"}
    if algo.target_labels in labels:
        return labels[algo.target_labels]
    return "DG only" if algo.dg_only else "UDA, DG" if algo.runs_in_dg() else "UDA"
