"""Text to audio with Tango: the pipeline, its loaders and the mel front end.

Tango and only Tango: nothing here imports the sound world, the annotation
tools or the app (they sit above this package).
"""

from .audio import load_audio, save_audio, wav_to_fbank
from .griffinlim import GriffinLimVocoder
from .registry import load_pipeline
from .tango import TangoPipeline, clip_seeds

__all__ = ["GriffinLimVocoder", "TangoPipeline", "load_audio", "load_pipeline", "clip_seeds", "save_audio", "wav_to_fbank"]
