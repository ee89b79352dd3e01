"""Imported afresh by tests.reliability._models._Litter, so that imports happen all through a run."""
