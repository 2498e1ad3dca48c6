"""Replaying a goal's reasoning trace from the log."""
