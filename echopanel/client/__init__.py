"""Async Python clients for the native protocol: ``LiveClient`` (one connection, the wire as it is) and its resilient
mode ``ResilientClient`` (buffer, reconnect policy, resume), which ``echopanel transcribe`` and ``echopanel listen``
run on."""

from echopanel.client.live import LiveClient, ServerError, TranscriptView
from echopanel.client.resilient import CatchUp, FatalConnectionError, ResilientClient, SessionLost

__all__ = [
    "CatchUp",
    "FatalConnectionError",
    "LiveClient",
    "ResilientClient",
    "ServerError",
    "SessionLost",
    "TranscriptView",
]
