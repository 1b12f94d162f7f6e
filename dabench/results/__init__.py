"""Tables and curves from run folders, and nothing else: none of it imports torch, so a copied
folder of runs can be read anywhere.

``records``: run folders -> RunRecords and table rows; ``selection``: which step each selection
method picks; ``leaderboard``: the tables; ``curve``: learning curves. ``dabench.results``
(dabench 0.1's module of the records) still gives their names.
"""
from dabench.results.records import (FOOTNOTE, REQUIRED, Row, RunRecords, aggregate, load_run, read_runs,  # noqa: F401
                                     row_label, variant)
