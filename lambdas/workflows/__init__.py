"""Durable workflow functions."""
