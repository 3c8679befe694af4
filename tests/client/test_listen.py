"""``echopanel listen`` on virtual devices: a private PulseAudio daemon with null sinks whose monitors are captured
through PortAudio (sounddevice), while ``paplay`` plays real speech into the "system" sink."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from echopanel.testing.proxy import ThreadedChaosProxy

from support import ServerProcess, librivox_refs, normalize, speech_wav, wer

# Five LibriVox sentences (24.7 s of speech): on three alone, streamed WER varied 0.07-0.16 between runs (tiny.en hears
# the isolated "ill disposed" as "old-sposed"), too noisy for a bound that should catch lost or repeated audio.
STEMS = [f"sense_and_sensibility_01_austen_64kb-0{n}" for n in (870, 880, 890, 920, 930)]
FINAL = re.compile(r"^\[(\d\d):(\d\d) (mic|system)[^\]]*\](?: \(repaired[^)]*\))? (.*)$")


@pytest.fixture(scope="module")
def pulse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A private PulseAudio daemon (no hardware) with two null sinks: ``ep_system`` and ``ep_mic``."""
    for tool in ("pulseaudio", "pactl", "paplay"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: `scripts/setup.sh test` installs pulseaudio and pulseaudio-utils (as root)")
    home = tmp_path_factory.mktemp("pulse")
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(home),
        "PULSE_SERVER": f"unix:{home}/pulse/native",
    }
    env.pop("PULSE_SOURCE", None)
    env.pop("PULSE_SINK", None)
    daemon = subprocess.Popen(
        [
            "pulseaudio",
            "-n",  # no default script: only the modules below
            "--daemonize=no",
            "--exit-idle-time=-1",
            "--system=false",
            "--log-target=stderr",
            "-L",
            "module-native-protocol-unix",
            "-L",
            "module-null-sink sink_name=ep_system",
            "-L",
            "module-null-sink sink_name=ep_mic",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(100):
            info = subprocess.run(["pactl", "list", "short", "sources"], env=env, capture_output=True, text=True)
            if "ep_system.monitor" in info.stdout:
                break
            if daemon.poll() is not None:
                pytest.fail(f"pulseaudio exited: {daemon.stderr.read() if daemon.stderr else ''}")
            time.sleep(0.1)
        else:
            pytest.fail("pulseaudio did not come up with the null sinks")
        yield env
    finally:
        daemon.terminate()
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()


def run_listen(env: dict[str, str], *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "echopanel", "listen", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_list_devices_shows_the_monitor(pulse: dict[str, str]) -> None:
    out = run_listen(pulse, "--list-devices")
    assert out.returncode == 0, out.stderr
    assert "pulse" in out.stdout  # PortAudio's ALSA route to PulseAudio
    assert "ep_system.monitor  <- system audio" in out.stdout


def test_missing_device_is_a_clear_error(pulse: dict[str, str]) -> None:
    out = run_listen(pulse, "--system", "no-such-device", "--url", "ws://127.0.0.1:9/v1/live")
    assert out.returncode == 2
    assert "no system device matches 'no-such-device'" in out.stdout + out.stderr
    assert "--list-devices" in out.stdout + out.stderr


def test_no_audio_server_means_no_default_device(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path), "PULSE_SERVER": "unix:/nonexistent"}
    out = run_listen(env, "--url", "ws://127.0.0.1:9/v1/live")
    assert out.returncode == 2
    assert "no mic device" in out.stdout + out.stderr


def test_listen_transcribes_system_audio(pulse: dict[str, str], server: ServerProcess, tmp_path: Path) -> None:
    """Speech played into a null sink, captured from its monitor; the connection drops once mid-speech (through a
    proxy) and the session resumes: the text is still right."""
    wav = tmp_path / "speech.wav"
    reference = speech_wav(wav, STEMS, lead_s=0.5, gap_s=1.0, tail_s=0.5)
    proxy = ThreadedChaosProxy("127.0.0.1", server.port).start()
    url = f"ws://127.0.0.1:{proxy.port}/v1/live"
    proc = subprocess.Popen(
        [sys.executable, "-m", "echopanel", "listen", "--mic", "ep_mic.monitor", "--system", "ep_system.monitor",
         "--url", url],
        env=pulse,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    lines: list[str] = []
    flowing: set[str] = set()
    live = threading.Event()
    all_flowing = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            lines.append(line)
            if line.endswith(" live"):
                live.set()
            m = re.match(r"^(mic|system): receiving audio", line)
            if m:
                flowing.add(m.group(1))
                if flowing == {"mic", "system"}:
                    all_flowing.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert live.wait(30), "\n".join(lines)
        assert all_flowing.wait(15), "\n".join(lines)
        player = subprocess.Popen(["paplay", "--device=ep_system", str(wav)], env=pulse)
        time.sleep(5.0)  # mid-way through the first sentence
        proxy.cut()
        assert player.wait(90) == 0
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, "\n".join(lines)
    finally:
        proxy.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    output = "\n".join(lines)
    finals = [m.groups() for m in map(FINAL.match, lines) if m]
    system_text = " ".join(text for _, _, source, text in finals if source == "system")
    mic_text = " ".join(text for _, _, source, text in finals if source == "mic")
    error = wer(reference, system_text)
    print(f"listen: {len(finals)} finals, system WER {error:.3f}")
    # Audio captured through PulseAudio in real time is segmented a little differently each run: tiny.en's WER on
    # these 71 words was 0.06-0.155 across runs ("Unless" heard as "I'd less"). The bound leaves room for that;
    # what the cut and resume must not do, lose or repeat a sentence, is checked sentence by sentence.
    assert error <= 0.20, output
    heard = Counter(normalize(system_text).split())
    for stem in STEMS:
        words = normalize(librivox_refs()[stem]).split()
        found = sum(min(n, heard[w]) for w, n in Counter(words).items())
        assert found >= 0.6 * len(words), (stem, output)  # every sentence is there
    assert len(finals) <= len(STEMS) + 2, output  # none decoded twice after the resume
    assert mic_text == "", output  # the mic sink is silent
    assert "session sess_" in output
    assert "reconnecting in" in output and "resumed session sess_" in output  # the drop, then the resume
    assert "utterances; session sess_" in output  # the summary after Ctrl-C
