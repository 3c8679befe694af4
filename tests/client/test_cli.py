"""``echopanel transcribe`` as a user runs it, against a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from echopanel.audio.wav import read_audio

from support import CARDS, LIBRIVOX, ServerProcess, librivox_refs, wer

NAME = "sense_and_sensibility_01_austen_64kb-0870"


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "echopanel", "transcribe", *args], capture_output=True, text=True, timeout=timeout
    )


def test_json_output_with_two_sources(server: ServerProcess) -> None:
    out = run_cli("--url", server.url, "--fast", "--json", str(LIBRIVOX / f"{NAME}.wav"), str(CARDS / "005.wav"))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["session_id"].startswith("sess_")
    items = result["items"]
    assert {i["source"] for i in items} == {"mic", "system"}
    for i in items:
        assert set(i) == {"item_id", "source", "text", "start_ms", "end_ms", "speaker"}
    mic = " ".join(i["text"] for i in items if i["source"] == "mic")
    assert wer(librivox_refs()[NAME], mic) <= 0.10, mic


def test_any_wav_is_converted_client_side(server: ServerProcess, tmp_path: Path) -> None:
    audio = read_audio(LIBRIVOX / f"{NAME}.wav", 44100)
    stereo = np.stack([audio, audio * 0.5], axis=1)
    path = tmp_path / "stereo44k.wav"
    sf.write(path, stereo, 44100, subtype="FLOAT")
    out = run_cli("--url", server.url, "--fast", "--json", str(path))
    assert out.returncode == 0, out.stderr
    text = " ".join(i["text"] for i in json.loads(out.stdout)["items"])
    assert wer(librivox_refs()[NAME], text) <= 0.10, text


def test_text_output_real_time(server: ServerProcess) -> None:
    out = run_cli("--url", server.url, str(LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0930.wav"))
    assert out.returncode == 0, out.stderr
    assert "amiable himself" in out.stdout.lower()
    assert "[00:00 mic]" in out.stdout


def test_clear_errors(server: ServerProcess, tmp_path: Path) -> None:
    missing = run_cli("--url", server.url, str(tmp_path / "nope.wav"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    unreachable = run_cli("--url", "ws://127.0.0.1:9/v1/live", str(LIBRIVOX / f"{NAME}.wav"), timeout=60)
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr


def test_offline_transcription_of_an_mp3_without_a_server(tmp_path: Path) -> None:
    import av

    audio = read_audio(LIBRIVOX / f"{NAME}.wav", 16000)
    mp3 = tmp_path / "speech.mp3"
    with av.open(str(mp3), "w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=16000, layout="mono")  # type: ignore[call-overload]
        frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    got = run_cli("--offline", "--format", "verbose_json", str(mp3))
    assert got.returncode == 0, got.stderr
    result = json.loads(got.stdout)
    assert wer(librivox_refs()[NAME], result["text"]) <= 0.10, result["text"]
    assert result["words"] and result["segments"][0]["start"] < result["segments"][0]["end"]
    bad = run_cli("--offline", str(tmp_path / "missing.mp3"))
    assert bad.returncode == 2 and "one audio file" in bad.stderr
    (tmp_path / "noise.ogg").write_bytes(b"not audio" * 50)
    noise = run_cli("--offline", str(tmp_path / "noise.ogg"))
    assert noise.returncode == 2 and "decodable" in noise.stderr
