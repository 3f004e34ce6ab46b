"""Text to audio with Tango: the pipeline, its loaders, the mel front end and the preference losses.

Names are imported on first use, so ``pipeline.soundworld`` (numpy and scipy only)
loads without pulling in torch, diffusers and transformers.
"""

from importlib import import_module

_EXPORTS = {
    "TangoPipeline": "pipeline.tango",
    "GriffinLimVocoder": "pipeline.griffinlim",
    "load_pipeline": "pipeline.registry",
    "load_audio": "pipeline.audio",
    "save_audio": "pipeline.audio",
    "wav_to_fbank": "pipeline.audio",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
