"""transcribe_audio."""
