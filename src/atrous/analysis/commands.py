"""`atrous rf`, `atrous design`, `atrous show` (placeholder)."""


def register(sub):
    pass
