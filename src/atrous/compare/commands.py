"""`atrous compare` (placeholder)."""


def register(sub):
    pass
