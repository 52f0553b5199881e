"""check_transcription."""
