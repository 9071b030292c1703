"""Mechanics shared by every Un-Mix entry script (mixing, data, checkpoints, distributed, logging)."""
