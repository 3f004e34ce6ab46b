"""Text to audio with Tango: the pipeline, its loaders and the mel front end.

Tango and only Tango: nothing here imports the sound world, the annotation
tools or the app (they sit above this package).

The names below load on first use (with the whole package, as diffusers needs the custom
components' modules imported): ``import pipeline`` and ``pipeline.specs`` cost no torch, so
the command lines answer ``--help`` and check their flags before torch and diffusers load.
"""

from importlib import import_module

_EXPORTS = {"GriffinLimVocoder": "griffinlim", "TangoPipeline": "tango", "clip_seeds": "tango", "load_audio": "audio",
            "load_pipeline": "registry", "save_audio": "audio", "wav_to_fbank": "audio"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import_module(".registry", __name__)  # every module of the package, as `import pipeline` always gave
    value = globals()[name] = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    return value
