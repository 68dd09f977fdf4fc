"""Interfaces only: the Gradio UI, the `sightline` CLI and the JS that seeks the player."""
