"""Moved to ``dabench.results.selection``; this path stays for code written for dabench 0.1 (one
module object under both names)."""
import sys

from dabench.results import selection as _moved

sys.modules[__name__] = _moved
