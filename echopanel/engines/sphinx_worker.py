"""One pocketsphinx decoder in its own process (``python -m echopanel.engines.sphinx_worker``).

pocketsphinx holds the GIL while it decodes, so decoders in threads do not run in parallel; in processes they do.
The parent (``engines/sphinx.py``) talks to this process over stdin/stdout with length-prefixed frames:

    request  = struct ">II" (header length, audio length) + JSON header + PCM16 LE mono 16 kHz audio
    response = struct ">I" (length) + JSON

Requests: ``{"op": "decode", "id", "restart", "final", "fault"}``. With ``restart`` a new utterance begins with this
audio; without it the audio continues the utterance already open (incremental: only new audio is searched). A
partial answers with the current hypothesis; a final ends the utterance and answers with words and times (ms from
the utterance start). ``{"op": "stats"}`` answers with the process's RSS. Failpoints (fault injection): ``fault``
"fail" answers an error, "hang" never answers, "die" exits at once.

Imports only pocketsphinx and the standard library, so the process stays small; it exits when stdin closes (the
server went away).
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
import time
from typing import Any, BinaryIO

from echopanel.metrics import rss_bytes

HEADER = struct.Struct(">II")
LENGTH = struct.Struct(">I")
FRAME_MS = 10  # pocketsphinx's frame rate is 100 per second
_ALT = re.compile(r"\(\d+\)$")  # alternative pronunciations: "been(2)"


def read_exact(stream: BinaryIO, n: int) -> bytes | None:
    chunks = []
    while n > 0:
        chunk = stream.read(n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def write_message(stream: BinaryIO, message: dict[str, Any]) -> None:
    body = json.dumps(message, separators=(",", ":")).encode()
    stream.write(LENGTH.pack(len(body)) + body)
    stream.flush()


def clean_word(word: str) -> str | None:
    """A dictionary word without its pronunciation variant; None for silence, noise and sentence marks."""
    if word.startswith(("<", "[", "++")):
        return None
    return _ALT.sub("", word)


def main() -> int:
    from pocketsphinx import Decoder

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    decoder = Decoder(loglevel="FATAL")  # the en-us acoustic model, 3-gram LM and dictionary inside the package
    in_utt = False
    parent = os.getppid()
    write_message(stdout, {"op": "ready", "pid": os.getpid(), "rss": rss_bytes()})
    while True:
        head = read_exact(stdin, HEADER.size)
        if head is None:
            return 0
        header_len, audio_len = HEADER.unpack(head)
        raw = read_exact(stdin, header_len)
        audio = read_exact(stdin, audio_len) if audio_len else b""
        if raw is None or audio is None:
            return 0
        req = json.loads(raw)
        rid = req.get("id")
        if req.get("op") == "stats":
            write_message(stdout, {"id": rid, "ok": True, "rss": rss_bytes()})
            continue
        fault = req.get("fault")
        if fault == "die":
            os._exit(3)
        if fault == "hang":
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and os.getppid() == parent:
                time.sleep(0.2)
            return 0
        if fault == "fail":
            write_message(stdout, {"id": rid, "ok": False, "error": "injected decode failure"})
            continue
        started = time.process_time()
        try:
            if req.get("restart") or not in_utt:
                if in_utt:
                    decoder.end_utt()
                decoder.start_utt()
                in_utt = True
            if audio:
                decoder.process_raw(audio, False, False)
            if req.get("final"):
                decoder.end_utt()
                in_utt = False
                words = []
                for seg in decoder.seg():
                    word = clean_word(seg.word)
                    if word:
                        confidence = min(1.0, max(0.0, float(seg.prob)))
                        words.append([word, seg.start_frame * FRAME_MS, (seg.end_frame + 1) * FRAME_MS, confidence])
                text = "".join(" " + w[0] for w in words)
                reply = {"id": rid, "ok": True, "text": text, "words": words}
            else:
                hyp = decoder.hyp()
                words_only = [w for w in (clean_word(x) for x in (hyp.hypstr if hyp else "").split()) if w]
                reply = {"id": rid, "ok": True, "text": "".join(" " + w for w in words_only), "words": []}
        except Exception as exc:  # a decoder error: answer it, start the next utterance afresh
            in_utt = False
            reply = {"id": rid, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        reply["cpu_s"] = round(time.process_time() - started, 4)
        write_message(stdout, reply)


if __name__ == "__main__":
    raise SystemExit(main())
