"""transcode_audio."""
