"""A rich progress display for the trainer: a bar with the live losses, a line per evaluation."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _fmt(losses: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.3f}" for k, v in losses.items())


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

    def evaluated(self, record: dict) -> None:
        shown = []
        for split in ("src-val", "tgt-val"):  # test numbers are shown once, at the end
            metrics = record.get(split, {})
            shown += [f"{split} {k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)]
        self.progress.console.print(f"step {record['step']:>6}  " + "  ".join(shown))

    def stop(self) -> None:
        if self.progress:
            self.progress.stop()
