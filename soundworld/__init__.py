"""A synthetic sound world with known truth: event vocabulary, prompt grammar, renderer and judge.

No model weights can be downloaded here, so the project trains tiny
Tango-architecture models on this world; the judge then plays CLAP's part
(ranking candidates, measuring whether clips follow their prompts).

    >>> from soundworld import render, judge, sample_prompts
    >>> prompt = sample_prompts("heldout", 1, seed=0)[0]
    >>> waveform, sample_rate, events = render(prompt, seed=0)
    >>> judge(waveform, sample_rate, prompt).score
    1.0

The package itself needs only numpy and scipy; ``evaluate`` loads torch and
the model pipeline only when it evaluates a model.
"""

from .grammar import (
    CONSTRUCTIONS,
    HELDOUT_PAIRS,
    ParsedPrompt,
    PromptError,
    UnknownWordError,
    parse,
    parse_prompt,
    sample_prompt_specs,
    sample_prompts,
    vocabulary_sentence,
    why_unreadable,
)
from .judge import DetectedEvent, JudgeResult, detect_events, judge
from .renderer import CLIP_SECONDS, SAMPLE_RATE, TimedEvent, render
from .vocabulary import EVENT_TYPES, EVENT_VOCABULARY

__all__ = [
    "CLIP_SECONDS",
    "CONSTRUCTIONS",
    "EVENT_TYPES",
    "EVENT_VOCABULARY",
    "HELDOUT_PAIRS",
    "SAMPLE_RATE",
    "DetectedEvent",
    "JudgeResult",
    "ParsedPrompt",
    "PromptError",
    "TimedEvent",
    "UnknownWordError",
    "detect_events",
    "judge",
    "parse",
    "parse_prompt",
    "render",
    "sample_prompt_specs",
    "sample_prompts",
    "vocabulary_sentence",
    "why_unreadable",
]
