"""Shared bench helpers: fixture audio and references, WER normalization, statistics, a noisy-neighbour check.

The server launcher lives in ``echopanel.testing.server`` (the tests use it too).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from echopanel import evaluation
from echopanel.testing.server import process_tree_cpu

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "audio"
LIBRIVOX = FIXTURES / "librivox"
CARDS = FIXTURES / "cards"
PHONE = FIXTURES / "phone"
SAMPLE_RATE = 16000

_TRANSCRIPTION_LINE = re.compile(r"<s>(.*)</s>\s*\((.*)\)")


# -- fixtures --------------------------------------------------------------------------------------------------------


def read_transcription(path: Path) -> dict[str, str]:
    """``<s> words </s> (fileid)`` lines as {fileid: words}."""
    refs: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = _TRANSCRIPTION_LINE.match(line.strip())
        if m:
            refs[m.group(2).strip()] = " ".join(m.group(1).split())
    return refs


def librivox_files() -> list[tuple[Path, str]]:
    """The five LibriVox sentences in file order, each with its reference text."""
    refs = read_transcription(LIBRIVOX / "transcription")
    return [(p, refs[p.stem]) for p in sorted(LIBRIVOX.glob("*.wav"))]


def cards_files() -> list[tuple[Path, str]]:
    refs = read_transcription(CARDS / "cards.transcription")
    return [(p, refs[p.stem]) for p in sorted(CARDS.glob("*.wav"))]


def phone_reference() -> str:
    words = []
    for line in (PHONE / "sample.stm").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6:
            words.append(parts[5])
    return " ".join(words)


# -- text ------------------------------------------------------------------------------------------------------------


normalize = evaluation.normalize
wer = evaluation.wer


# -- statistics ------------------------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".3f", unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:{spec}}{unit}"


def pct(fraction: float | None, spec: str = ".1f") -> str:
    """A fraction as a percentage, or n/a."""
    return fmt(None if fraction is None else fraction * 100, spec, "%")


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    def default(o: object) -> object:
        if isinstance(o, float) and not math.isfinite(o):
            return None
        return str(o)

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_finite(data), indent=2, default=default) + "\n")
    print(f"wrote {path}")


def _finite(o: Any) -> Any:
    """NaN/inf become null so the file is strict JSON."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_finite(v) for v in o]
    return o


class ContentionMonitor:
    """How much CPU *other* processes used meanwhile (not this bench, not the server): a noisy-neighbour check.

    ``other_cpus()`` is the average number of CPUs busy outside this process tree and ``server_pid``'s since the
    last ``reset()``; anything well above ~0.1 means the figures were measured on a shared, loaded machine.
    """

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self.cpus = psutil.cpu_count() or 1
        self.reset()

    def _busy(self) -> float:
        t = psutil.cpu_times()
        # guest time is already inside user/nice; steal is the hypervisor's, not a neighbour process's
        skipped = ("idle", "iowait", "steal", "guest", "guest_nice")
        return sum(getattr(t, f) for f in t._fields if f not in skipped)

    def _ours(self) -> float:
        ours = process_tree_cpu(os.getpid())
        return ours + (process_tree_cpu(self.server_pid) if self.server_pid is not None else 0.0)

    def reset(self) -> None:
        self._t0 = time.monotonic()
        self._busy0 = self._busy()
        self._ours0 = self._ours()

    def other_cpus(self) -> float:
        wall = time.monotonic() - self._t0
        if wall <= 0:
            return 0.0
        other = (self._busy() - self._busy0) - (self._ours() - self._ours0)
        return max(0.0, other / wall)


def describe_close(ws: Any) -> dict[str, Any]:
    """How a websockets client connection ended: code, reason, and which side sent the first close frame."""
    if ws is None:
        return {"code": None, "reason": "", "closed_by": "never opened"}
    protocol = getattr(ws, "protocol", None)
    rcvd = getattr(protocol, "close_rcvd", None)
    sent = getattr(protocol, "close_sent", None)
    then = getattr(protocol, "close_rcvd_then_sent", None)
    if rcvd is None and sent is None:
        closed_by = "nobody (connection dropped)"
    elif rcvd is not None and (sent is None or then):
        closed_by = "server"
    else:
        closed_by = "client"
    return {"code": ws.close_code, "reason": ws.close_reason or "", "closed_by": closed_by}


def git_state() -> str:
    """``git describe --always --dirty`` of the checkout being measured (the server runs from it)."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"
