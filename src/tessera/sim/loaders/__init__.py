"""Loaders for public trace formats (each module reads one format into Tessera's model)."""
