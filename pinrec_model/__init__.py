"""The PinRec model as a pure library: embedders, causal transformer, conditioned head, losses,
generation and retrieval. No I/O, logging or clock inside `forward`."""
