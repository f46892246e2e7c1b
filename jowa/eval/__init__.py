"""Evaluation in the Arcade Learning Environment."""
