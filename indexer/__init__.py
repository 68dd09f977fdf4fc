"""A video file in, index records out: probe, decode, shots, speech, on-screen text, embeddings, captions."""
