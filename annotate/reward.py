"""Moved to ``preference.reward`` (``python -m preference.reward``); this path forwards there until the next release."""

from annotate.moved import forward

forward(__name__, "annotate.reward", "preference.reward", "python -m preference.reward")
