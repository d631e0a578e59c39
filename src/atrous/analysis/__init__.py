"""Measuring dilated networks: receptive field, coverage, cost, effective receptive field."""
