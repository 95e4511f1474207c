"""Samples showing the library at work."""
