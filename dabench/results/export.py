"""A folder of runs -> the same folders with their records and without their weights.

    dabench export runs/ results/            # config.json, results.jsonl, timings.jsonl, done
    dabench export runs/ results/ --steps    # also steps.jsonl (every step's losses, for the curves)

What comes out is what ``dabench leaderboard`` and ``dabench report`` read, so a table can be
re-made by anyone from a paper's supplement or a repository, and nothing in it is code or weights
(no ``.pt``: a stranger's folder holds only JSON). Only finished runs are exported, and runs that
stopped on a non-finite loss (with their ``failed``: the leaderboard counts them); a run already
in DEST with the same files is left as it is (files it lacks, say ``steps.jsonl``, are added), and
one whose files differ is refused (exit 2)
before anything is written, so DEST never mixes two versions of a run. Each file is written to a
temporary name and renamed, so a kill leaves a run whole or without its ``done``.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from dabench.errors import DabenchError
from dabench.results.leaderboard import run_folders
from dabench.runfolder import CONFIG, DONE, FAILED, RESULTS, STEPS, TIMINGS, failure, is_done

RECORDS = (CONFIG, RESULTS, TIMINGS)  # DONE is written last, after the records it vouches for


@dataclass
class Exported:
    written: list[Path] = field(default_factory=list)  # run folders written (under DEST)
    same: list[Path] = field(default_factory=list)  # already in DEST with the same files
    unfinished: list[Path] = field(default_factory=list)  # under SRC, not exported (no ``done`` nor ``failed``)


def export(src: str | Path, dest: str | Path, steps: bool = False) -> Exported:
    """Copy every finished run's records under ``src`` to the same relative folder under ``dest``."""
    root, dirs = run_folders(src)
    dest = Path(dest).expanduser()
    if dest.resolve() == root.resolve() or root.resolve() in dest.resolve().parents:
        raise DabenchError(f"dabench export: {dest} is inside {root}; export to a folder outside the runs.")
    names = RECORDS + ((STEPS,) if steps else ())
    result, plan = Exported(), []
    for run_dir in dirs:
        last = DONE if is_done(run_dir) else FAILED if failure(run_dir) else None  # the marker, copied last
        if last is None:
            result.unfinished.append(run_dir)
            continue
        files = [n for n in names if (run_dir / n).is_file()]
        target = dest / run_dir.relative_to(root)
        if (target / CONFIG).exists():
            differ = [n for n in files if (target / n).is_file() and
                      (target / n).read_bytes() != (run_dir / n).read_bytes()]
            if differ:
                raise DabenchError(f"dabench export: {target} already holds a different version of {run_dir} "
                                   f"({', '.join(differ)} differ). Export to an empty folder, or remove {target} "
                                   "first. Nothing was written.")
            if (target / last).exists() and all((target / n).is_file() for n in files):
                result.same.append(target)
                continue
        plan.append((run_dir, target, files, last))
    for run_dir, target, files, last in plan:
        target.mkdir(parents=True, exist_ok=True)
        for name in (*files, last):
            tmp = target / (name + ".tmp")
            shutil.copyfile(run_dir / name, tmp)
            os.replace(tmp, target / name)
        result.written.append(target)
    return result
