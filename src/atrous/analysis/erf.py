"""Placeholder (analysis issue)."""


def effective_receptive_field(*a, **k):
    raise NotImplementedError
