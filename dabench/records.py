"""``results.jsonl``: one JSON line per evaluation, appended as a run goes.

Torch-free, so the leaderboard can read a results folder copied from a cluster anywhere.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def append_record(path: Path, record: dict) -> None:
    with open(path, "a") as f:  # one write of one whole line, then flush to disk
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_records(path: Path) -> list[dict]:
    """JSON lines up to the first one that is not a whole record: a crash mid-write cuts the last
    line, and nothing after it can be trusted."""
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if not isinstance(record, dict) or "step" not in record:
            break
        out.append(record)
    return out
