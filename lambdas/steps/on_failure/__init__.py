"""on_failure."""
