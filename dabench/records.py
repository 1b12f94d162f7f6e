"""``results.jsonl`` and ``steps.jsonl``: one JSON line per evaluation (or step), appended as a run goes.

Torch-free, so the leaderboard can read a results folder copied from a cluster anywhere. A record
is written as one whole line, flushed and synced; reading checks every line, so a line a kill cut
(the last one, without its newline) or a damaged one is found, never silently taken for the end.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from dabench.errors import DabenchError


def append_record(path: Path, record: dict) -> None:
    with open(path, "a") as f:  # one write of one whole line, then flush to disk
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_records(path: Path, records: list[dict]) -> None:
    """Replace a record file by ``records`` atomically: a kill leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


@dataclass
class Scan:
    """The whole records of a file, in order, up to its first unreadable line (if any)."""

    records: list[dict] = field(default_factory=list)
    bad_line: int | None = None  # 1-based number of the first unreadable line
    why: str = ""
    torn: bool = False  # that line is the file's last and lacks its newline: a write a kill interrupted

    def problem(self, path: Path) -> str:
        what = "is cut off (a write interrupted by a kill or a full disk)" if self.torn else f"is not a record ({self.why})"
        return f"{path} line {self.bad_line} {what}"


def scan_records(path: Path) -> Scan:
    """Read a JSON-lines record file line by line; stop at the first line that is not a whole record
    (a JSON object with a "step")."""
    scan = Scan()
    if not path.exists():
        return scan
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    complete = text.endswith("\n") or not text
    if complete:
        lines = lines[:-1]
    for i, line in enumerate(lines, start=1):
        torn = i == len(lines) and not complete
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            scan.bad_line, scan.why, scan.torn = i, f"not JSON: {exc.msg}", torn
            return scan
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            scan.bad_line, scan.why, scan.torn = i, "no step", torn
            return scan
        if torn:  # valid JSON, but its newline never got written: the write was cut
            scan.bad_line, scan.why, scan.torn = i, "no newline", True
            return scan
        scan.records.append(record)
    return scan


def read_records(path: Path, strict: bool = False) -> list[dict]:
    """The records of ``path``. ``strict``: a file with an unreadable line is a ``DabenchError`` naming
    the line; otherwise the whole records before it (a run still writing its last line)."""
    scan = scan_records(path)
    if strict and scan.bad_line is not None:
        raise DabenchError(f"{scan.problem(path)}: the file was damaged after its run wrote it, and its records cannot "
                           "all be read. Run that config again (--overwrite).")
    return scan.records
