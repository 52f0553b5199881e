"""notify_user."""
