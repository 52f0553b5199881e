"""parse_save_transcription."""
