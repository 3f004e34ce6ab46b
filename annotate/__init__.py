"""Human annotation: blind K-way ranking tasks, votes, gold tasks, the verdict, and the export of votes as pairs.

``from annotate import Store`` is all the app needs; the pool, pairs, verdict and export
modules are imported where used (they pull in heavier libraries). Automatic pair making is
``autopairs``, the preference model ``preference``, reading and writing datasets ``preference_data``.
"""

from .store import Candidate, Ranking, ShownClip, Store, Task, UnusableStore
from .validation import InvalidAudio, InvalidInput, InvalidVote, VoteConflict

__all__ = ["Store", "Task", "ShownClip", "Candidate", "Ranking",
           "InvalidInput", "InvalidVote", "VoteConflict", "InvalidAudio", "UnusableStore"]
