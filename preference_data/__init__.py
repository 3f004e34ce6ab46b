"""Preference datasets on disk: the project's schema (Audio-Alpaca's columns and more), written atomically and read
back for training (``preference_data.dataset``); crash-safe file operations (``preference_data.files``); sampled
latents as bytes (``preference_data.latents``). Imported by module, so that the light ones stay light."""
