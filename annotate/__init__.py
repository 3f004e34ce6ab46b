"""Turning clips into preference data: blind K-way ranking tasks, votes, pairs, datasets.

``from annotate import Store`` is all the app needs; the pool, pairs, dataset and export
modules are imported where used (they pull in heavier libraries).
"""

from .store import Candidate, Ranking, ShownClip, Store, Task, UnusableStore
from .validation import InvalidAudio, InvalidInput, InvalidVote, VoteConflict

__all__ = ["Store", "Task", "ShownClip", "Candidate", "Ranking",
           "InvalidInput", "InvalidVote", "VoteConflict", "InvalidAudio", "UnusableStore"]
