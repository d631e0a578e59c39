"""Placeholder (analysis issue)."""


class Layer:  # placeholder
    pass


class ReceptiveField:  # placeholder
    pass


def receptive_field(*a, **k):
    raise NotImplementedError


def receptive_fields(*a, **k):
    raise NotImplementedError
