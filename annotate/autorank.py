"""Moved to ``autopairs.autorank`` (``python -m autopairs.autorank``); this path forwards there until the next release."""

from annotate.moved import forward

forward(__name__, "annotate.autorank", "autopairs.autorank", "python -m autopairs.autorank")
