"""Async Python client for the native protocol."""

from echopanel.client.live import LiveClient, ServerError, TranscriptView

__all__ = ["LiveClient", "ServerError", "TranscriptView"]
