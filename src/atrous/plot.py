"""Every matplotlib figure of atrous (extra: ``plot``). Imported lazily; figures are drawn from
saved data (dicts/arrays/JSON records), never from state that only lived in memory.
"""

from __future__ import annotations

from ._optional import require


def _plt():
    """matplotlib.pyplot with the non-interactive Agg backend."""
    mpl = require("matplotlib", "plot")
    mpl.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# --- analysis figures (coverage / path counts / field growth) ---


# --- compare figures (accuracy vs params/MACs, field pictures, learning curves) ---
