"""start_transcription."""
