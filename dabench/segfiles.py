"""Moved to ``dabench.segdata.pairs``; this path stays for code written for dabench 0.1 (one module
object under both names)."""
import sys

from dabench.segdata import pairs as _moved

sys.modules[__name__] = _moved
