"""``echopanel`` command line: serve, transcribe, listen."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from echopanel.config import Settings, SettingsError


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get("ECHOPANEL_" + name, default)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="echopanel", description="Real-time streaming speech-to-text")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server (ECHOPANEL_* variables set the defaults)")
    serve.add_argument("--host", help="bind address (ECHOPANEL_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port, 0 for any free one (ECHOPANEL_PORT, default 8765)")
    serve.add_argument("--token", help="require this bearer token (ECHOPANEL_TOKEN; default: no auth)")
    serve.add_argument("--data-dir", help="where sessions and recordings live (ECHOPANEL_DATA_DIR)")
    serve.add_argument("--max-sessions", type=int, help="concurrent session limit (ECHOPANEL_MAX_SESSIONS, default 16)")
    serve.add_argument(
        "--store",
        help="session store: a SQLite path or sqlite:///PATH (default: echopanel.db in the data dir), or "
        "postgresql://USER@HOST:PORT/DB shared by a fleet (ECHOPANEL_STORE)",
    )
    serve.add_argument("--node-id", help="this node's name in a shared store (ECHOPANEL_NODE_ID; default host:port)")
    serve.add_argument(
        "--fleet-max-sessions",
        type=int,
        help="session limit of the whole fleet, held in the shared store (ECHOPANEL_FLEET_MAX_SESSIONS; default none)",
    )
    serve.add_argument("--log-level", default=_env("LOG_LEVEL", "info"))

    tr = sub.add_parser("transcribe", help="stream WAV files to a server and print the transcript")
    tr.add_argument("files", nargs="+", help="one WAV (mic) or two (mic and system); with --offline one audio file")
    tr.add_argument(
        "--offline",
        action="store_true",
        help="transcribe the file in this process, no server (any usual container: wav, mp3, m4a, webm, ogg, flac)",
    )
    tr.add_argument("--format", choices=["text", "json", "srt", "vtt", "verbose_json"], default="text",
                    help="--offline output (default text)")  # fmt: skip
    tr.add_argument("--language", default="en", help="--offline: the language of the audio (default en)")
    tr.add_argument("--prompt", default="", help="--offline: text that guides the decoder (names, terms)")
    tr.add_argument("--url", default=_env("URL", "ws://127.0.0.1:8765/v1/live"))
    tr.add_argument("--token", default=_env("TOKEN"))
    tr.add_argument("--fast", action="store_true", help="send as fast as the server accepts, not in real time")
    tr.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    tr.add_argument(
        "--buffer-s",
        type=float,
        default=30.0,
        help="unacknowledged audio kept for a reconnect, in seconds (default 30; at the bound: a real-time stream "
        "drops the oldest, --fast waits)",
    )

    ls = sub.add_parser("listen", help="capture the microphone (and system audio) live and print the transcript")
    ls.add_argument("--mic", metavar="DEVICE", help="input device: index, name or part of it (default: the default)")
    ls.add_argument("--no-mic", action="store_true", help="do not capture a microphone (with --system)")
    ls.add_argument("--system", metavar="DEVICE", help="loopback/monitor device for system audio (see --list-devices)")
    ls.add_argument("--list-devices", action="store_true", help="list input devices and PulseAudio/PipeWire sources")
    ls.add_argument("--url", default=_env("URL", "ws://127.0.0.1:8765/v1/live"))
    ls.add_argument("--token", default=_env("TOKEN"))

    from echopanel import sessions_cli

    sessions_cli.add_parser(sub)

    args = parser.parse_args(argv)
    if args.command == "sessions":
        return sessions_cli.run(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "listen":
        from echopanel.client.listen import main as listen_main

        return listen_main(args)
    return _transcribe(args)


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    try:
        settings = Settings.from_env(
            host=args.host,
            port=args.port,
            token=args.token,
            data_dir=args.data_dir,
            max_sessions=args.max_sessions,
            store=args.store,
            node_id=args.node_id,
            fleet_max_sessions=args.fleet_max_sessions,
        )
    except SettingsError as exc:  # refused at start: say which variable or flag, and what it allows
        print(f"echopanel serve: {exc}", file=sys.stderr)
        return 2
    from echopanel.server.run import serve

    try:
        asyncio.run(serve(settings))
    except KeyboardInterrupt:
        pass
    return 0


def _transcribe(args: argparse.Namespace) -> int:
    if args.offline:
        if len(args.files) != 1 or not Path(args.files[0]).is_file():
            print("echopanel transcribe --offline: give one audio file", file=sys.stderr)
            return 2
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        from echopanel.offline_cli import run

        return run(Path(args.files[0]), fmt=args.format, language=args.language, prompt=args.prompt)
    if len(args.files) > 2:
        print("echopanel transcribe: at most two files (mic and system)", file=sys.stderr)
        return 2
    for f in args.files:
        if not Path(f).is_file():
            print(f"echopanel transcribe: no such file: {f}", file=sys.stderr)
            return 2
    try:
        return asyncio.run(_transcribe_async(args))
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"echopanel transcribe: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1


async def _transcribe_async(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from echopanel.audio.wav import read_pcm16
    from echopanel.client import ServerError, TranscriptView
    from echopanel.client.resilient import (
        ConnectionStatus,
        FatalConnectionError,
        ResilientClient,
        SessionLost,
    )
    from echopanel.client.stream import transcribe_resilient

    sources = ["mic", "system"][: len(args.files)]
    audio = {source: read_pcm16(path) for source, path in zip(sources, args.files, strict=True)}
    console = Console(stderr=args.json)
    live = Live(Text(""), console=console, auto_refresh=False, transient=True) if not args.json else None
    partial: dict[str, str] = {}
    status_console = Console(stderr=True)  # the connection state goes to stderr, whatever the output mode
    shown: list[str] = []

    def on_state(status: ConnectionStatus) -> None:
        if not shown or status.state != shown[-1]:
            shown.append(status.state)
            status_console.print(f"[dim]connection: {status.describe()}[/dim]", highlight=False)

    async def ticker(client: ResilientClient) -> None:
        """While the connection is down, say when the next attempt comes and how much audio is buffered."""
        while True:
            await asyncio.sleep(1.0)
            status = client.status()
            if status.state in ("reconnecting", "connecting"):
                status_console.print(f"[dim]connection: {status.describe()}[/dim]", highlight=False)

    def on_event(ev: dict[str, Any], view: TranscriptView) -> None:
        if live is None:
            return
        kind = ev.get("type")
        if kind == "response.text.delta":
            item = view.items[ev["item_id"]]
            partial[item.source] = item.stable + item.tentative
        elif kind == "response.done":
            partial.pop(ev["source"], None)
            if ev["text"]:
                live.console.print(_line(ev["source"], ev["start_ms"], ev["text"]))
        elif kind == "error":
            live.console.print(f"[red]error {ev.get('code')}: {ev.get('message')}[/red]")
        status = Text("\n".join(f"{s} … {t}" for s, t in partial.items() if t), style="dim")
        live.update(status, refresh=True)

    # A file sent faster than real time should wait for the server (not be shed), and wait for room in the client's
    # buffer during an outage; a real-time stream behaves like live capture: at the buffer bound the oldest goes.
    client = ResilientClient(
        args.url,
        token=args.token,
        sources=sources,
        session={"overflow": "block"} if args.fast else None,
        buffer_s=args.buffer_s,
        when_full="wait" if args.fast else "drop_oldest",
        on_state=on_state,
    )
    try:
        await client.open()
        tick = asyncio.create_task(ticker(client))
        if live is not None:
            live.start()
        try:
            view = await transcribe_resilient(client, audio, realtime=not args.fast, on_event=on_event)
        finally:
            tick.cancel()
            if live is not None:
                live.stop()
        code = client.close_code
    except ServerError as exc:
        print(f"echopanel transcribe: server refused the session: {exc}", file=sys.stderr)
        return 1
    except (SessionLost, FatalConnectionError) as exc:
        print(f"echopanel transcribe: {exc}", file=sys.stderr)
        return 1
    if client.lost_ms:
        print(f"echopanel transcribe: {client.lost_ms} ms of audio lost at the buffer bound", file=sys.stderr)
    session_id = client.session.get("id")
    if args.json:
        items = [
            {
                "item_id": i.item_id,
                "source": i.source,
                "text": i.final,
                "start_ms": i.start_ms,
                "end_ms": i.end_ms,
                "speaker": i.speaker,
            }
            for i in view.finals()
        ]
        print(json.dumps({"session_id": session_id, "items": items}, ensure_ascii=False))
    else:
        console.rule(f"transcript {session_id}")
        for i in view.finals():
            console.print(_line(i.source, i.start_ms, i.final or ""))
    if code not in (1000, None):
        print(f"echopanel transcribe: connection closed with code {code}", file=sys.stderr)
        return 1
    return 0


def _line(source: str, start_ms: int, text: str) -> str:
    s = start_ms // 1000
    return f"[{s // 60:02d}:{s % 60:02d} {source}] {text}"


if __name__ == "__main__":
    raise SystemExit(main())
