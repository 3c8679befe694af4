"""File transcription: a whole recording decoded through the same engine and scheduler as live sessions, after
every live decode (``JobKind.BACKGROUND``); what ``POST /v1/audio/transcriptions`` and ``echopanel transcribe
--offline`` run."""
