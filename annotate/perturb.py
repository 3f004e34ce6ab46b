"""Moved to ``soundworld.perturb`` (``python -m soundworld.perturb``); this path forwards there until the next release."""

from annotate.moved import forward

forward(__name__, "annotate.perturb", "soundworld.perturb", "python -m soundworld.perturb")
