"""``echopanel listen``'s terminal output: what the user reads while the capture streams and after it ends.

Finals print as lines (``final_line``: ``[mm:ss source speaker] text``, with the repair they carry), connection
changes as time-stamped lines (``state_line``), and after Ctrl-C the session summary (``print_summary``). In a
terminal ``ListenView`` also keeps a live status block (rich ``Live``, redrawn on events and four times a second): the
connection (the client's ``status()``), each source's level, freshness, backpressure and latency, the degrade level,
and the partials. The capture-to-client glue that feeds it is ``echopanel.client.listen``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from echopanel.client.capture import DeviceCapture
from echopanel.client.resilient import ConnectionStatus


def state_line(status: ConnectionStatus) -> str:
    """The line ``listen`` prints when the connection state changes."""
    if status.state == "reconnecting":
        what = status.message or "connection lost"
        retry = status.retry_in_s or 0.0
        return f"{what}; reconnecting in {retry:.1f} s (attempt {status.attempt + 1}); audio is kept meanwhile"
    if status.state == "closing":
        return "finishing: waiting for the last results and the summary"
    if status.state in ("live", "connecting"):
        return status.state
    return f"{status.state}: {status.message}" if status.message else status.state


@dataclass
class SourceLink:
    """One source: its capture, and what the server says about it."""

    capture: DeviceCapture
    index: int
    backpressure: str = "normal"
    metrics: dict[str, Any] = field(default_factory=dict)
    ended: bool = False
    receiving: bool = False
    warned_silence: bool = False

    @property
    def name(self) -> str:
        return self.capture.role


class ListenView:
    """Terminal output: finals as lines; in a terminal also a live status block with partials."""

    def __init__(self, console: Console, links: list[SourceLink]) -> None:
        self.console = console
        self.links = links
        self.interactive = console.is_terminal
        self.state = "starting"
        self.status: Callable[[], ConnectionStatus] | None = None  # the client's, for the live block
        self.session_id: str | None = None
        self.degrade = "0 normal"
        self.partials: dict[str, str] = {}
        self.live: Live | None = None
        if self.interactive:
            self.live = Live(self._render(), console=console, auto_refresh=False, transient=True)

    def __enter__(self) -> ListenView:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()

    def print(self, message: Any, style: str | None = None) -> None:
        (self.live.console if self.live is not None else self.console).print(message, style=style, highlight=False)
        self.refresh()

    def set_state(self, state: str, style: str | None = None) -> None:
        if state != self.state:
            self.state = state
            self.print(f"[{time.strftime('%H:%M:%S')}] {state}", style=style or "cyan")

    def on_status(self, status: ConnectionStatus) -> None:
        """The client's state changed: a line for each change that matters, the live block for the rest."""
        if status.state in ("closed", "failed"):  # the end is told by the listener, with what to do
            self.refresh()
        elif status.state == "connecting" and self.state != "starting":
            self.refresh()  # the attempts of an outage: its "reconnecting" line says enough
        else:
            style = {"live": "green", "reconnecting": "yellow"}.get(status.state)
            self.set_state(state_line(status), style)

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._render(), refresh=True)

    def _render(self) -> Group:
        state = self.status().describe() if self.status is not None else self.state
        lines = [Text(f"● {state}", style="bold cyan")]
        now = time.monotonic()
        for link in self.links:
            cap = link.capture
            level = cap.level
            bar = "█" * int(min(1.0, level) * 20)
            age = now - cap.last_audio_at if cap.last_audio_at else None
            fresh = (
                "ended" if link.ended else ("waiting" if age is None else ("now" if age < 1 else f"{age:.1f} s ago"))
            )
            m = link.metrics
            fp = (m.get("first_partial_latency_ms") or {}).get("p50")
            fl = (m.get("final_latency_ms") or {}).get("p50")
            lat = f"p50 first {fp:.0f} ms / final {fl:.0f} ms" if fp is not None and fl is not None else "latency –"
            lines.append(
                Text(
                    f"  {link.name:<7} {bar:<20} audio {fresh:<11} backpressure {link.backpressure:<8} {lat}",
                    style="red" if link.backpressure == "shedding" else "",
                )
            )
        lines.append(Text(f"  degrade {self.degrade}", style="dim"))
        for source, text in self.partials.items():
            if text:
                lines.append(Text(f"{source} … {text}", style="italic dim"))
        return Group(*lines)


def final_line(ev: dict[str, Any]) -> str:
    s = int(ev.get("start_ms", 0)) // 1000
    source = str(ev.get("source"))
    speaker = ev.get("speaker")
    who = (
        "" if not speaker else (str(speaker)[len(source) :] if str(speaker).startswith(source + ":") else f" {speaker}")
    )
    replaces = ev.get("replaces") or []
    flag = " (repaired)" if ev.get("repaired") else ""
    if replaces:
        flag = f" (repaired: replaces {', '.join(map(str, replaces))})"
    return f"[{s // 60:02d}:{s % 60:02d} {source}{who}]{flag} {ev.get('text', '').strip()}"


def print_summary(console: Console, summary: dict[str, Any] | None) -> None:
    if summary is None:
        return
    console.rule(f"summary {summary.get('session_id', '')}")

    def text_of(v: Any) -> str:
        if isinstance(v, str):
            return v
        if isinstance(v, dict):
            speaker = f"{v['speaker']}: " if v.get("speaker") else ""
            extra = ", ".join(f"{k} {v[k]}" for k in ("owner", "due") if v.get(k))
            return f"{speaker}{v.get('text', '')}" + (f" ({extra})" if extra else "")
        return str(v)

    body = summary.get("summary")
    sections: list[tuple[str, Any]] = [("Summary", body)] if isinstance(body, list) else []
    if isinstance(body, str):
        console.print(body, highlight=False)
    sections += [
        ("Action items", summary.get("action_items")),
        ("Decisions", summary.get("decisions")),
        ("Risks", summary.get("risks")),
        ("Open questions", summary.get("open_questions")),
    ]
    for title, values in sections:
        if values:
            console.print(f"{title}:", style="bold")
            for v in values:
                console.print(f"  - {text_of(v)}", highlight=False)
    for row in summary.get("speakers") or []:
        if isinstance(row, dict):
            console.print(
                f"  {row.get('speaker')}: {int(row.get('talk_ms', 0)) / 1000:.1f} s of talk, {row.get('items')} items",
                highlight=False,
            )
    transcript = summary.get("transcript") or []
    console.print(f"{len(transcript)} utterances; session {summary.get('session_id')}", style="dim")
