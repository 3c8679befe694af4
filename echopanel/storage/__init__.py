"""Durable storage: per-source audio recordings (and, later, sessions and transcripts)."""
