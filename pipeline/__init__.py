"""Text to audio with Tango: the pipeline, its loaders, the mel front end and the preference losses."""

from .audio import load_audio, save_audio, wav_to_fbank
from .registry import load_pipeline
from .tango import TangoPipeline

__all__ = ["TangoPipeline", "load_pipeline", "load_audio", "save_audio", "wav_to_fbank"]
