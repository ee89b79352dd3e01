"""Experiments reproducing the paper's claims on real data; each is ``python -m studies.experiments.NAME``."""
