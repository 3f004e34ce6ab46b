"""Prompt checks a model may name: for models whose text encoder reads only a small language.

A model folder names its check in ``model_index.json`` (``"prompt_check": "module:function"``); the pipeline imports
that module and uses the function only if the module registered it here with ``@prompt_check``. The registration is
the module's consent: a folder from the Hub cannot make a pipeline call an arbitrary function (``os:system``) with
its prompts. Torch-free, so a light module (the sound world's grammar) can register its check.
"""

from __future__ import annotations

import importlib
import re
from typing import Callable

PromptCheck = Callable[[str], "str | None"]  # a prompt -> why the model cannot read it, or None
_REGISTERED: dict[str, PromptCheck] = {}
_NAME = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def prompt_check(function: PromptCheck) -> PromptCheck:
    """Register ``function`` as a check a model may name, as ``"its.module:its_name"``."""
    _REGISTERED[f"{function.__module__}:{function.__name__}"] = function
    return function


def named_prompt_check(name: str) -> PromptCheck:
    """The registered check ``name`` ("module:function") names, importing its module; ``ValueError`` for any other."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"`prompt_check` must name a function as 'module:function', got {name!r:.80}")
    try:
        importlib.import_module(name.split(":")[0])
    except ImportError as err:
        raise ValueError(f"`prompt_check` {name!r}: its module cannot be imported ({err})") from None
    if name not in _REGISTERED:
        raise ValueError(f"`prompt_check` {name!r} is not a registered prompt check (registered: "
                         f"{', '.join(sorted(_REGISTERED)) or 'none'})")
    return _REGISTERED[name]
