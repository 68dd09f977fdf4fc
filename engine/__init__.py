"""Models: registry and loading, quantization, video -> model inputs, the M²LA latent cache, generation, the agent.

Importing this package (or `engine.defaults`) loads no torch: heavy imports happen inside the functions that
need them, so the CLI can read the engine's defaults and start fast.
"""
