"""Live capture from audio devices (PortAudio through sounddevice) for ``echopanel listen``.

A device is named by a PortAudio index, a PortAudio device name (exact or a unique part of it), or on Linux a
PulseAudio/PipeWire source name such as ``alsa_output.pci-0000_00_1f.3.analog-stereo.monitor`` (the monitor of an
output captures what plays on it: the system audio of a call). PortAudio reaches PulseAudio and PipeWire through
ALSA's ``pulse`` device; the source is chosen by setting ``PULSE_SOURCE`` while that stream opens. ``monitor`` is
short for ``@DEFAULT_MONITOR@``, the monitor of the default output. On macOS a loopback device such as BlackHole is
an ordinary input device.

Every device is opened at its own rate; blocks are mixed to mono and resampled to 16 kHz (soxr) on the event loop
side. The PortAudio callback only copies the block and hands it to the loop; the hand-off queue is bounded
(``MAX_PENDING_MS``): if the loop falls that far behind, the oldest blocks are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from echopanel.audio.convert import StreamResampler, float_to_pcm16

TARGET_RATE = 16000
BLOCK_MS = 20
MAX_PENDING_MS = 5000  # blocks waiting for the event loop, per device
DEFAULT_MONITOR = "@DEFAULT_MONITOR@"
PULSE_DEVICE = "pulse"  # ALSA's PulseAudio/PipeWire plugin device, as PortAudio lists it

PORTAUDIO_HINT = (
    "PortAudio is needed for live capture: on Debian/Ubuntu `sudo apt-get install libportaudio2`; "
    "on macOS and Windows it comes with the sounddevice package."
)


class CaptureError(Exception):
    """A device cannot be found or opened; the message says what to do."""


def _sd() -> Any:
    try:
        import sounddevice
    except OSError as exc:  # the PortAudio library itself is missing
        raise CaptureError(f"{exc}. {PORTAUDIO_HINT}") from None
    return sounddevice


@dataclass(frozen=True, slots=True)
class InputDevice:
    index: int
    name: str
    host_api: str
    channels: int
    rate: float
    default: bool = False


@dataclass(frozen=True, slots=True)
class PulseSource:
    name: str
    description: str
    monitor: bool


@dataclass(frozen=True, slots=True)
class DeviceChoice:
    """What to open: a PortAudio device, and for PulseAudio/PipeWire sources the source to ask for."""

    device: InputDevice
    pulse_source: str | None = None

    @property
    def label(self) -> str:
        return f"{self.pulse_source} (PulseAudio/PipeWire)" if self.pulse_source else self.device.name


def input_devices() -> list[InputDevice]:
    sd = _sd()
    try:
        default_in = sd.default.device[0]
        apis = sd.query_hostapis()
        devices = sd.query_devices()
    except sd.PortAudioError as exc:
        raise CaptureError(f"cannot list audio devices: {exc}") from None
    return [
        InputDevice(
            index=int(d["index"]),
            name=str(d["name"]),
            host_api=str(apis[d["hostapi"]]["name"]),
            channels=int(d["max_input_channels"]),
            rate=float(d["default_samplerate"]),
            default=int(d["index"]) == default_in,
        )
        for d in devices
        if d["max_input_channels"] > 0
    ]


def pulse_sources() -> list[PulseSource]:
    """PulseAudio/PipeWire sources (``pactl``), or none where there is no such server."""
    if shutil.which("pactl") is None:
        return []
    try:
        out = subprocess.run(
            ["pactl", "list", "short", "sources"], capture_output=True, text=True, timeout=5, check=True
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    sources = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            name = parts[1]
            sources.append(PulseSource(name, parts[2] if len(parts) > 2 else "", name.endswith(".monitor")))
    return sources


def resolve(spec: str | None, role: str) -> DeviceChoice:
    """The device for ``--mic``/``--system`` (``role``); ``None`` is the default input device."""
    devices = input_devices()
    if spec is None:
        default = next((d for d in devices if d.default), None)
        if default is None:
            raise CaptureError(f"no {role} device: this machine has no default input device. {_list_hint()}")
        return DeviceChoice(default)
    if spec.isdigit():
        match = next((d for d in devices if d.index == int(spec)), None)
        if match is None:
            raise CaptureError(f"no input device has index {spec}. {_list_hint()}")
        return DeviceChoice(match)
    exact = [d for d in devices if d.name == spec]
    if exact:
        return DeviceChoice(exact[0])
    pulse = next((d for d in devices if d.name == PULSE_DEVICE), None)
    sources = pulse_sources() if pulse is not None else []
    wanted = DEFAULT_MONITOR if spec == "monitor" else spec
    if pulse is not None and (wanted.startswith("@") or any(s.name == wanted for s in sources)):
        return DeviceChoice(pulse, wanted)
    partial = [d for d in devices if spec.lower() in d.name.lower()]
    if len(partial) == 1:
        return DeviceChoice(partial[0])
    partial_sources = [s for s in sources if spec.lower() in s.name.lower()]
    if pulse is not None and len(partial_sources) == 1:
        return DeviceChoice(pulse, partial_sources[0].name)
    names = [d.name for d in partial] + [s.name for s in partial_sources]
    if names:
        raise CaptureError(f"{role} device {spec!r} is ambiguous: it matches {', '.join(map(repr, names))}")
    raise CaptureError(f"no {role} device matches {spec!r}. {_list_hint()}")


def _list_hint() -> str:
    return "Run `echopanel listen --list-devices` to see the devices."


def describe_devices() -> str:
    """The text of ``--list-devices``."""
    lines = ["Input devices (use the index or the name with --mic / --system):"]
    for d in input_devices():
        mark = " (default)" if d.default else ""
        lines.append(f"  {d.index:>3}  {d.name}{mark}  [{d.host_api}, {d.channels} ch, {d.rate:.0f} Hz]")
    sources = pulse_sources()
    if sources:
        lines.append("PulseAudio/PipeWire sources (use the name; monitors capture what plays on an output):")
        for s in sources:
            lines.append(f"       {s.name}{'  <- system audio' if s.monitor else ''}")
        lines.append(f"       monitor  (short for {DEFAULT_MONITOR}, the default output's monitor)")
    elif sys.platform == "darwin":
        lines.append("System audio on macOS: install a loopback device such as BlackHole, send the call's output")
        lines.append("to it (a Multi-Output Device keeps it audible) and pass its name with --system.")
    return "\n".join(lines)


_PULSE_LOCK = threading.Lock()


@contextlib.contextmanager
def _pulse_source(name: str | None) -> Iterator[None]:
    """``PULSE_SOURCE`` set while one stream opens (libpulse reads it when the ALSA plugin connects)."""
    if name is None:
        yield
        return
    with _PULSE_LOCK:
        old = os.environ.get("PULSE_SOURCE")
        os.environ["PULSE_SOURCE"] = name
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("PULSE_SOURCE", None)
            else:
                os.environ["PULSE_SOURCE"] = old


def open_error(role: str, choice: DeviceChoice, exc: Exception) -> CaptureError:
    text = str(exc)
    hint = ""
    lowered = text.lower()
    if "permission" in lowered or "not permitted" in lowered or "-13" in text:
        hint = (
            " Permission denied: on Linux check that your user may use audio devices (the 'audio' group, or a "
            "running PulseAudio/PipeWire); on macOS allow your terminal under System Settings > Privacy & "
            "Security > Microphone."
        )
    elif "unavailable" in lowered or "busy" in lowered:
        hint = " The device may be in use by another program."
    return CaptureError(f"cannot open the {role} device {choice.label}: {text}.{hint}")


@dataclass
class DeviceCapture:
    """One open input device delivering 16 kHz mono PCM16 blocks to the event loop."""

    role: str
    choice: DeviceChoice
    loop: asyncio.AbstractEventLoop
    rate: int = 0
    channels: int = 1
    blocks: deque[np.ndarray] = field(default_factory=deque)
    dropped_ms: float = 0.0  # blocks dropped because the loop fell behind
    overflows: int = 0  # PortAudio reported input overflow
    samples: int = 0  # 16 kHz samples delivered
    level: float = 0.0  # peak of the latest block, 0..1
    last_audio_at: float = 0.0  # monotonic time of the latest block
    nonzero_seen: bool = False
    stopped_reason: str | None = None
    _stream: Any = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    _resampler: StreamResampler | None = None

    def open(self) -> None:
        sd = _sd()
        device = self.choice.device
        self.rate = int(device.rate) or 48000
        self._resampler = StreamResampler(self.rate, TARGET_RATE)
        last: Exception | None = None
        for channels in dict.fromkeys((1, min(2, device.channels))):
            try:
                with _pulse_source(self.choice.pulse_source):
                    stream = sd.InputStream(
                        device=device.index,
                        channels=channels,
                        samplerate=self.rate,
                        dtype="float32",
                        blocksize=self.rate * BLOCK_MS // 1000,
                        callback=self._callback,
                        finished_callback=self._finished,
                    )
                    stream.start()
            except (sd.PortAudioError, ValueError) as exc:
                last = exc
                continue
            self._stream = stream
            self.channels = channels
            return
        assert last is not None
        raise open_error(self.role, self.choice, last)

    # PortAudio's thread: copy and hand over, nothing else.
    def _callback(self, data: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        block = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0].copy()
        overflow = bool(status and status.input_overflow)
        with contextlib.suppress(RuntimeError):  # the loop is closed: we are shutting down
            self.loop.call_soon_threadsafe(self._deliver, block, overflow)

    def _finished(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._on_finished)

    def _on_finished(self) -> None:
        if self.stopped_reason is None:
            self.stopped_reason = "the device stopped delivering audio (unplugged or taken away?)"
        self._ready.set()

    def _deliver(self, block: np.ndarray, overflow: bool) -> None:
        self.overflows += overflow
        self.blocks.append(block)
        limit = max(1, MAX_PENDING_MS // BLOCK_MS)
        while len(self.blocks) > limit:
            old = self.blocks.popleft()
            self.dropped_ms += 1000 * len(old) / self.rate
        self._ready.set()

    async def read(self) -> bytes | None:
        """The next PCM16 16 kHz audio (all blocks waiting), or None once the device has stopped."""
        while not self.blocks:
            if self.stopped_reason is not None:
                return None
            self._ready.clear()
            await self._ready.wait()
        audio = np.concatenate(list(self.blocks))
        self.blocks.clear()
        if audio.size:
            self.level = float(np.abs(audio).max())
            self.nonzero_seen = self.nonzero_seen or self.level > 0
        self.last_audio_at = time.monotonic()
        assert self._resampler is not None
        out = self._resampler.process(audio.astype(np.float32, copy=False))
        self.samples += len(out)
        return float_to_pcm16(out)

    def close(self, reason: str = "stopped") -> None:
        if self.stopped_reason is None:
            self.stopped_reason = reason
        self._ready.set()
        if self._stream is not None:
            stream, self._stream = self._stream, None
            with contextlib.suppress(Exception):
                stream.abort()
                stream.close()


def open_captures(specs: Sequence[tuple[str, str | None]], loop: asyncio.AbstractEventLoop) -> list[DeviceCapture]:
    """Open every (role, device spec); on any failure close the ones already open and raise ``CaptureError``."""
    captures: list[DeviceCapture] = []
    try:
        for role, spec in specs:
            capture = DeviceCapture(role, resolve(spec, role), loop)
            capture.open()
            captures.append(capture)
    except CaptureError:
        for c in captures:
            c.close()
        raise
    return captures
