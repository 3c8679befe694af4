"""EchoPanel: real-time streaming speech-to-text for meetings."""

__version__ = "0.1.0"
