"""Benchmarks: aioloader side by side with torch DataLoader in the same process run."""
