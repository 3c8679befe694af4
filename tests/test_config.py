"""Settings: defaults, ECHOPANEL_* variables, CLI flags over both, and bad values refused at start."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel

from echopanel.config import RecognizerSettings, Settings, SettingsError, variable
from echopanel.flow.ladder import LadderSettings, Level

ROOT = Path(__file__).resolve().parent.parent


def test_env_then_flags() -> None:
    env = {"ECHOPANEL_PORT": "9001", "ECHOPANEL_TOKEN": "t", "ECHOPANEL_DATA_DIR": "/tmp/x"}
    s = Settings.from_env(env)
    assert (s.port, s.token, s.data_dir) == (9001, "t", Path("/tmp/x"))
    s = Settings.from_env(env, port=0, host="0.0.0.0", token=None)
    assert (s.port, s.host, s.token) == (0, "0.0.0.0", "t")


def test_defaults() -> None:
    s = Settings.from_env({})
    assert (s.host, s.port, s.token) == ("127.0.0.1", 8765, None)
    assert s == Settings()


def test_nested_settings_from_the_environment() -> None:
    env = {
        "ECHOPANEL_RECOGNIZER__HANGOVER_MS": "450",
        "ECHOPANEL_RECOGNIZER__VAD_THRESHOLD": "0.6",
        "ECHOPANEL_LADDER__UP_AFTER_S": "3.5",
        "ECHOPANEL_LADDER__MAX_LEVEL": "3",
        "ECHOPANEL_FAULT_INJECTION": "1",
        "ECHOPANEL_SPEAKERS": "0",
        "ECHOPANEL_MAX_SESSIONS": "",  # empty: not set
        "ECHOPANEL_LOG_LEVEL": "debug",  # the CLI's, not a setting: ignored here
        "OTHER": "x",
    }
    s = Settings.from_env(env)
    assert s.recognizer == RecognizerSettings(hangover_ms=450, vad_threshold=0.6)
    assert s.ladder == LadderSettings(up_after_s=3.5, max_level=Level.NO_PARTIALS)
    assert (s.fault_injection, s.speakers, s.max_sessions) == (True, False, 16)


def test_a_settings_object_is_its_values_and_the_environment_only_through_from_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ECHOPANEL_MIC_QUEUE_MS", "1234")
    assert Settings(data_dir=Path("/tmp/d")).mic_queue_ms == 4000  # tests and code: no surprises from the shell
    assert Settings.from_env().mic_queue_ms == 1234  # the server: the process environment
    s = Settings(data_dir=Path("/tmp/d"), mic_queue_ms=400).replace(system_queue_ms=200)
    assert (s.data_dir, s.mic_queue_ms, s.system_queue_ms) == (Path("/tmp/d"), 400, 200)
    with pytest.raises(ValueError):
        s.replace(system_queue_ms=0)  # copies are validated too
    with pytest.raises(ValueError):
        Settings(max_sesions=3)  # a misspelt setting is refused, not ignored


def _other_value(name: str, annotation: Any, default: Any) -> tuple[str, Any]:
    """A valid value other than the default, as an environment variable's text and as the setting."""
    if name.endswith("_dir"):
        return "/tmp/echopanel-x", Path("/tmp/echopanel-x")
    if name == "fleet_max_sessions":  # an optional integer (unset by default)
        return "40", 40
    if isinstance(default, bool):
        return ("0", False) if default else ("1", True)
    if isinstance(default, Level):
        return "3", Level.NO_PARTIALS
    if isinstance(default, int):
        return str(default + 1), default + 1
    if isinstance(default, float):
        return str(default / 2), default / 2
    choices = get_args(annotation)
    if choices and all(isinstance(c, str) for c in choices):
        other = next(c for c in choices if c != default)
        return other, other
    return "example", "example"  # host, token


def _leaves(model: type[Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any, Any]]:
    """(path, annotation, default) of every setting, nested sections included."""
    out = []
    if issubclass(model, BaseModel):
        fields = {n: (f.annotation, f.get_default(call_default_factory=True)) for n, f in model.model_fields.items()}
    else:  # a dataclass section (LadderSettings)
        instance = model()
        fields = {n: (f.type, getattr(instance, n)) for n, f in model.__dataclass_fields__.items()}
    for name, (annotation, default) in fields.items():
        if isinstance(default, BaseModel) or hasattr(type(default), "__dataclass_fields__"):
            out += _leaves(type(default), (*prefix, name))
        else:
            out.append(((*prefix, name), annotation, default))
    return out


def test_every_setting_can_be_set_from_the_environment() -> None:
    leaves = _leaves(Settings)
    env, expected = {}, {}
    for path, annotation, default in leaves:
        text, value = _other_value(path[-1], annotation, default)
        env[variable(path)] = text
        expected[path] = value
    s = Settings.from_env(env)
    for path, value in expected.items():
        got: Any = s
        for part in path:
            got = getattr(got, part)
        assert got == value, (variable(path), got, value)
    assert len(leaves) > 50


def test_the_settings_section_of_the_behaviour_doc_lists_every_variable() -> None:
    doc = (ROOT / "docs" / "behaviour.md").read_text()
    section = doc.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`(ECHOPANEL_[A-Z0-9_]+)`", section))
    assert {variable(path) for path, _, _ in _leaves(Settings)} <= listed


@pytest.mark.parametrize(
    ("env", "flags", "expected"),
    [
        ({"ECHOPANEL_PORT": "abc"}, {}, "ECHOPANEL_PORT='abc': Input should be a valid integer"),
        ({"ECHOPANEL_OVERFLOW": "drop"}, {}, "ECHOPANEL_OVERFLOW='drop': Input should be 'shed' or 'block'"),
        ({"ECHOPANEL_FALLBACK_ENGINE": "vosk"}, {}, "Input should be 'pocketsphinx' or 'none'"),
        ({"ECHOPANEL_SEND_TIMEOUT_S": "0"}, {}, "ECHOPANEL_SEND_TIMEOUT_S='0': Input should be greater than 0"),
        ({"ECHOPANEL_FAULT_INJECTION": "maybe"}, {}, "ECHOPANEL_FAULT_INJECTION='maybe': Input should be a valid bool"),
        ({"ECHOPANEL_RECOGNIZER__HANGOVER_MS": "-1"}, {}, "ECHOPANEL_RECOGNIZER__HANGOVER_MS='-1': Input should be "),
        ({"ECHOPANEL_RECOGNIZER__MAX_UTTERANCE_MS": "40000"}, {}, "less than or equal to 30000"),
        ({"ECHOPANEL_RECOGNIZER__SOFT_MAX_UTTERANCE_MS": "20000"}, {}, "must not exceed max_utterance_ms (15000)"),
        ({"ECHOPANEL_RECOGNIZER__HANGOVR_MS": "200"}, {}, "ECHOPANEL_RECOGNIZER__HANGOVR_MS='200': no such setting"),
        ({"ECHOPANEL_RECOGNIZER": "hangover 200"}, {}, "a section's variable takes JSON"),
        ({"ECHOPANEL_LADDER__UP_AFTER_S": "soon"}, {}, "ECHOPANEL_LADDER__UP_AFTER_S='soon': Input should be a valid"),
        ({"ECHOPANEL_LADDER__SETTLE_S": "-1"}, {}, "ECHOPANEL_LADDER: settle_s must be >= 0, not -1.0"),
        ({"ECHOPANEL_LADDER__MAX_LEVEL": "6"}, {}, "ECHOPANEL_LADDER: max_level must be at most 5"),
        ({"ECHOPANEL_LADDER__UP_AFTR_S": "1"}, {}, "ECHOPANEL_LADDER__UP_AFTR_S='1': no such setting"),
        ({}, {"port": 70000}, "--port=70000: Input should be less than or equal to 65535"),
        ({}, {"max_sessions": 0}, "--max-sessions=0: Input should be greater than 0"),
    ],
)
def test_bad_values_are_refused_with_the_variable_and_what_is_allowed(
    env: dict[str, str], flags: dict[str, Any], expected: str
) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env, **flags)
    assert expected in str(info.value), str(info.value)


def test_every_bad_value_is_listed_and_the_token_is_never_shown() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"ECHOPANEL_PORT": "-1", "ECHOPANEL_MAX_SOURCES": "0", "ECHOPANEL_TOKEN": "s3cret"})
    message = str(info.value)
    assert "ECHOPANEL_PORT" in message and "ECHOPANEL_MAX_SOURCES" in message and "s3cret" not in message


def test_a_flag_overrides_a_bad_variable() -> None:
    assert Settings.from_env({"ECHOPANEL_PORT": "abc"}, port=0).port == 0


def serve(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ECHOPANEL_")} | env
    cmd = [sys.executable, "-m", "echopanel", "serve", "--port", "0", "--data-dir", str(tmp_path), *args]
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=60)


def test_serve_refuses_to_start_on_a_bad_value(tmp_path: Path) -> None:
    done = serve(tmp_path, {"ECHOPANEL_OVERFLOW": "drop", "ECHOPANEL_RECOGNIZER__HANGOVER_MS": "soon"})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "ECHOPANEL_OVERFLOW='drop': Input should be 'shed' or 'block'" in done.stderr
    assert "ECHOPANEL_RECOGNIZER__HANGOVER_MS='soon'" in done.stderr
    assert "EchoPanel ready" not in done.stderr


def test_serve_names_the_flag_it_refuses(tmp_path: Path) -> None:
    done = serve(tmp_path, {}, "--max-sessions", "0")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--max-sessions=0: Input should be greater than 0" in done.stderr
