"""Scheduled background jobs with a single-runner lease and cache invalidation helpers."""
