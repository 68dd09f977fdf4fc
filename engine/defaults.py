"""The engine's defaults that the app's settings share (app/settings.py reads them): each written once, here.

A light module (no torch, nothing of the project), so the CLI can read it and still start fast.
"""

GIB = 2**30

DEFAULT_CACHE_BYTES = 4 * GIB  # memory budget of the per-video prefix caches (SIGHTLINE_CACHE_BYTES)
DEFAULT_AGENT_STEPS = 8  # tool calls the agent may make before it must answer (SIGHTLINE_AGENT_STEPS)

# The prefix caches' disk spill, when no cap is set (SIGHTLINE_CACHE_DISK_BYTES=0): the smaller of the two.
DISK_DEFAULT_MAX = 20 * GIB
DISK_DEFAULT_SHARE = 0.10  # of the free space on the library's disk
