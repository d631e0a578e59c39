"""NumPy engine (placeholder while the foundation issue is in progress)."""

_BUDGET = 256 * 2**20


def get_memory_budget():
    return _BUDGET


def set_memory_budget(nbytes):
    raise NotImplementedError


def conv(*a, **k):
    raise NotImplementedError


def conv_transpose(*a, **k):
    raise NotImplementedError


def conv_grad(*a, **k):
    raise NotImplementedError
