"""The preference model: a ranker learned from votes (``preference.reward``), hearing clips through an event tagger
(``preference.events``) where the sound world gives one. ``python -m preference.reward --help`` for its commands."""
