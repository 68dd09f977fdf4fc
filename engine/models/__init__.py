"""Model architectures Sightline defines itself (one file per architecture)."""
