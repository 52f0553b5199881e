"""fetch_audio_metadata."""
