"""What the trainer shows: on a terminal a rich bar with the live losses; elsewhere (a Slurm or CI
log file) plain lines. Both print one line per evaluation. ``make_reporter`` picks."""
from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _fmt(losses: dict[str, float]) -> str:
    """Losses to read at a glance: three decimals, or three significant digits below 0.01 (CORAL's
    term is of order 1e-4 on digits, which .3f would show as 0.000)."""
    return "  ".join(f"{k} {v:.3f}" if v == 0 or abs(v) >= 0.01 else f"{k} {v:.2e}" for k, v in losses.items())


def make_reporter(console: Console | None = None, title: str = "train", plain: bool = False):
    """A live bar when ``console`` (default: stderr) is a terminal, plain lines otherwise (or with
    ``plain``: several processes share one terminal)."""
    console = console or Console(stderr=True, soft_wrap=True)
    return RichReporter(console, title) if console.is_terminal and not plain else PlainReporter(console, title)


def _eval_line(record: dict) -> str:
    """Source validation first (what selection reads), in percent; the labelled target val split is
    shown for reading only (no default selection reads it); test numbers are shown once, at the end."""
    shown = []
    for split, note in (("src-val", ""), ("tgt-val", " (labelled target, oracle only)")):
        metrics = {k: v for k, v in record.get(split, {}).items() if isinstance(v, float) and k != "loss"}
        if metrics:
            shown.append(f"{split} " + " ".join(f"{k} {100 * v:.1f}%" for k, v in metrics.items()) + note)
    return f"step {record['step']:>6}  " + "  ".join(shown)


class PlainReporter:
    """Progress as plain lines, for output that is not a terminal: ``<title> <stage> step k/n  losses
    (mean since the last line)  steps/s``, every tenth of a stage or every ``interval_s`` seconds,
    whichever comes first, and at its end."""

    def __init__(self, console: Console | None = None, title: str = "train", interval_s: float = 60.0):
        self.console = console or Console(stderr=True)
        self.title, self.interval_s = title, interval_s

    def start(self, total: int, done: int, stage: str = "train") -> None:
        self.total, self.stage, self.every = total, stage, max(1, total // 10)
        self.last_step, self.last_time, self.sums, self.count = done, time.perf_counter(), {}, 0

    def advance(self, step: int, losses: dict[str, float]) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1
        now = time.perf_counter()
        if step % self.every and step != self.total and now - self.last_time < self.interval_s:
            return
        rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
        mean = {k: v / self.count for k, v in self.sums.items()}
        self.console.print(f"{self.title} {self.stage} step {step}/{self.total}  {_fmt(mean)}  {rate:.2f} steps/s",
                           markup=False, highlight=False, soft_wrap=True)
        self.last_step, self.last_time, self.sums, self.count = step, now, {}, 0

    def evaluating(self, step: int) -> None:
        self.started = time.perf_counter()

    def evaluated(self, record: dict) -> None:
        took = f"  (evaluated in {time.perf_counter() - self.started:.1f} s)" if hasattr(self, "started") else ""
        self.console.print(f"{self.title} {_eval_line(record)}{took}", markup=False, highlight=False, soft_wrap=True)

    def stop(self) -> None: ...


class RichReporter:
    def __init__(self, console: Console | None = None, title: str = "train"):
        self.console = console or Console(stderr=True)
        self.title = title
        self.progress: Progress | None = None
        self.task = None
        self.smooth: dict[str, float] = {}

    def start(self, total: int, done: int, stage: str = "train") -> None:
        self.progress = Progress(
            TextColumn(f"[bold]{self.title}[/] {stage}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn(), TextColumn("{task.fields[losses]}"),
            console=self.console, transient=False, refresh_per_second=4,
        )
        self.progress.start()
        self.task = self.progress.add_task(stage, total=total, completed=done, losses="")

    def advance(self, step: int, losses: dict[str, float]) -> None:
        for k, v in losses.items():  # exponential moving average, so the display does not flicker
            self.smooth[k] = v if k not in self.smooth else 0.9 * self.smooth[k] + 0.1 * v
        self.progress.update(self.task, completed=step, losses=_fmt(self.smooth))

    def evaluating(self, step: int) -> None:
        self.progress.update(self.task, losses=f"evaluating at step {step} ...")

    def evaluated(self, record: dict) -> None:
        self.progress.console.print(_eval_line(record), markup=False, highlight=False, soft_wrap=True)

    def stop(self) -> None:
        if self.progress:
            self.progress.stop()
