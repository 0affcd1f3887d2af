"""The run toolkit every training command uses: the process context (device, DDP, seeding), JSONL metrics,
provenance beside the outputs, and a small trainer base with callbacks (see `trainer.py`)."""
