"""Hybrid cache (L1 memory, L2 distributed, fail-safe) with a backplane, FusionCache-style."""
