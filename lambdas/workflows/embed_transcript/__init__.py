"""embed_transcript."""
