"""Model selection: which evaluation of a run (and which hyperparameter sample) to report.

DomainBed's idea (Gulrajani & Lopez-Paz, "In Search of Lost Domain Generalization", 2021):
the number in a table is the target-test value at a step chosen from validation data only.
Here that is structural, not a convention: ``select`` hands a method copies of the records
with the ``tgt-test`` split removed, and only the caller looks the test value up at the step
the method returned.

    record = choose("source-val", records, "acc")      # the caller may read record["tgt-test"]

Two oracles read the labelled target validation split (``tgt-val``, held out of target train):
``target-oracle`` is DomainBed's test-domain validation (``domainbed/model_selection.py``,
``OracleSelectionMethod``): no early stopping, the last evaluation of every hyperparameter sample,
the sample with the best target validation there. ``target-oracle-best`` also chooses the step
by target validation (early stopping on target labels), which is optimistic: the upper bound a
step-choosing method (source-val, the label-free scores) is compared with.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping, Sequence

from dabench.errors import DabenchError

TEST = "tgt-test"  # the one split no selection method is ever given


@dataclass(frozen=True)
class Method:
    name: str
    title: str  # what it chooses, for captions
    oracle: bool  # True: uses target labels, so tables must flag it
    split: str  # the validation split that ranks hyperparameter samples
    index_of: Callable[[Sequence[Mapping], str], int]  # (records without tgt-test, metric) -> the chosen one's index
    key: str | None = None  # the score it reads in ``split`` (None: the run's metric)
    lower_is_better: bool = False

    def score(self, record: Mapping, metric: str) -> float:
        """What the method maximises, for one record (-inf where the record lacks it)."""
        return signed(value(record, self.split, self.key or metric), self.lower_is_better)

    @property
    def label_free(self) -> bool:
        return self.split == LABEL_FREE

    def applies(self, records: Sequence[Mapping]) -> bool:
        """False for a method whose score no record holds (label-free scores of runs from before
        they existed, DEV on segmentation; leave-one-domain-out without its validation runs): it
        would pick the last step by default, not by its score."""
        if self.label_free:
            return any(self.key in (r.get(LABEL_FREE) or {}) for r in records)
        return self.split != LODO_VAL or any(r.get(LODO_VAL) for r in records)


def value(record: Mapping, split: str, metric: str) -> float:
    """``record[split][metric]``, or -inf when absent, null or NaN (so it never wins a max)."""
    v = (record.get(split) or {}).get(metric)
    return -math.inf if v is None or v != v else float(v)


def signed(v: float, lower_is_better: bool) -> float:
    """``v`` as a score to maximise; a missing value (-inf) stays the worst."""
    return -v if lower_is_better and v != -math.inf else v


def _best(split: str, key: str | None = None, lower_is_better: bool = False) -> Callable[[Sequence[Mapping], str], int]:
    """The record best on ``split``'s ``key`` (the run's metric when None); ties: the later step."""
    def index_of(records: Sequence[Mapping], metric: str) -> int:
        return max(range(len(records)), key=lambda i: (signed(value(records[i], split, key or metric), lower_is_better), i))

    return index_of


def _last(records: Sequence[Mapping], metric: str) -> int:
    """The last evaluation: no early stopping."""
    return len(records) - 1


LABEL_FREE = "tgt-unlabeled"  # scores on unlabelled target train images (dabench.labelfree)
# Domain generalisation's leave-one-domain-out validation (DomainBed): at each step, the mean
# target-val metric of the runs that held out each source domain in turn (dabench.leaderboard adds it).
LODO_VAL = "lodo-val"


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("source-val", "best source validation", False, "src-val", _best("src-val")),
    Method("target-oracle", "test-domain validation as DomainBed's oracle: the last evaluation, the hyperparameter "
           "sample by its labelled target validation there (held out of target train, not the test split)", True,
           "tgt-val", _last),
    Method("target-oracle-best", "best labelled target validation step (early stopping on target labels, optimistic; "
           "held out of target train, not the test split)", True, "tgt-val", _best("tgt-val")),
    Method("last", "last evaluation", False, "src-val", _last),
    Method("entropy", "lowest mean prediction entropy on unlabelled target images", False, LABEL_FREE,
           _best(LABEL_FREE, "entropy", True), "entropy", True),
    Method("im", "highest information maximisation on unlabelled target images", False, LABEL_FREE,
           _best(LABEL_FREE, "im"), "im"),
    Method("snd", "highest soft neighbourhood density on unlabelled target images", False, LABEL_FREE,
           _best(LABEL_FREE, "snd"), "snd"),
    Method("dev", "lowest deep embedded validation risk (importance-weighted source-val loss)", False, LABEL_FREE,
           _best(LABEL_FREE, "dev", True), "dev", True),
    Method("lodo", "leave-one-domain-out: best mean accuracy on each source domain held out of a run trained on the "
           "others (DomainBed)", False, LODO_VAL, _best(LODO_VAL)),
]}


# The protocols (dabench.protocol cuts their splits) and the selection methods each leaves possible:
# "paper" holds nothing out, so the last step is its only honest choice.
PROTOCOLS: dict[str, tuple[str, ...]] = {"dabench": ("source-val", "target-oracle", "target-oracle-best", "last", "entropy",
                                                     "im", "snd", "dev"),
                                         "paper": ("last",)}


# Domain generalisation's selections, as DomainBed names them: training-domain validation (our
# source-val: the held-out 20% of every source domain, pooled), leave-one-domain-out, test-domain
# validation (our target-oracle: its last step, as DomainBed's oracle), and the last step.
DG_METHODS = ("source-val", "lodo", "target-oracle", "last")
DG_TITLES = {"source-val": "training-domain validation (the held-out 20% of every source domain, pooled)",
             "target-oracle": "test-domain validation as DomainBed's oracle (the last step; the hyperparameter sample "
                              "by its accuracy there on labelled held-out images of the test domain)"}
# What the label-free and source methods are scored against (dabench.leaderboard.agreement): they
# choose a step, so the oracle that also chooses one by target labels.
AGREEMENT_ORACLE = "target-oracle-best"


def protocol_methods(protocol: str) -> list[Method]:
    """The selection methods a run of ``protocol`` can be reported under."""
    if protocol not in PROTOCOLS:
        raise DabenchError(f"Unknown protocol '{protocol}'. Known: {', '.join(PROTOCOLS)}.")
    return [METHODS[name] for name in PROTOCOLS[protocol]]


def get(method: str | Method) -> Method:
    if isinstance(method, Method):
        return method
    if method not in METHODS:
        raise DabenchError(f"Unknown model selection method '{method}'. Known: {', '.join(METHODS)}.")
    return METHODS[method]


def without_test(records: Sequence[Mapping]) -> tuple[Mapping, ...]:
    """Read-only copies of ``records`` that have no ``tgt-test`` key: all a method is given."""
    return tuple(MappingProxyType(copy.deepcopy({k: v for k, v in r.items() if k != TEST})) for r in records)


def _pick(method: Method, visible: tuple[Mapping, ...], metric: str) -> int:
    if not visible:
        raise DabenchError("Model selection needs at least one evaluation record; this run has none.")
    if visible[-1].get("stage") == "swad":
        return len(visible) - 1  # a --swad run's model is its weight average, whatever the selection
    index = method.index_of(visible, metric)
    if not isinstance(index, int) or not 0 <= index < len(visible):
        raise ValueError(f"selection method '{method.name}' returned {index!r}, not an index below {len(visible)}")
    return index


def select(method: str | Method, records: Sequence[Mapping], metric: str) -> int:
    """Index of the record ``method`` chooses; the method never sees ``tgt-test``."""
    return _pick(get(method), without_test(records), metric)


def choose(method: str | Method, records: Sequence[dict], metric: str) -> dict:
    """The record ``method`` chooses, whole: the caller, not the method, reads its test value."""
    return records[select(method, records, metric)]


def select_run(method: str | Method, runs: Sequence[Sequence[Mapping]], metric: str) -> tuple[int, int]:
    """(run index, record index) for a hyperparameter sweep of one trial seed.

    Each run (one hyperparameter sample) gets its record chosen by ``method``; the run whose
    chosen record is best on the method's validation split wins (``last``: source validation of
    the final record; ``target-oracle``: target validation of the final record, DomainBed's
    oracle), as DomainBed selects per trial seed. Ties go to the earlier run.
    """
    m = get(method)
    if not runs:
        raise DabenchError("Hyperparameter selection needs at least one run.")
    visible = [without_test(records) for records in runs]
    picks = [_pick(m, v, metric) for v in visible]
    best = max(range(len(runs)), key=lambda r: (m.score(visible[r][picks[r]], metric), -r))
    return best, picks[best]
