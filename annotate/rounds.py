"""Moved to ``train_rounds`` (``python train_rounds.py``); this path forwards there until the next release."""

from annotate.moved import forward

forward(__name__, "annotate.rounds", "train_rounds", "python train_rounds.py")
