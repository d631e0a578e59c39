"""Placeholder (analysis issue)."""


def design_dilations(*a, **k):
    raise NotImplementedError
