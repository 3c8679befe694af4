"""The server: HTTP app, WebSocket dialects, sessions."""
