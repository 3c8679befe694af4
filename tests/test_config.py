from pathlib import Path

from echopanel.config import Settings


def test_env_then_flags() -> None:
    env = {"ECHOPANEL_PORT": "9001", "ECHOPANEL_TOKEN": "t", "ECHOPANEL_DATA_DIR": "/tmp/x"}
    s = Settings.from_env(env)
    assert (s.port, s.token, s.data_dir) == (9001, "t", Path("/tmp/x"))
    s = Settings.from_env(env, port=0, host="0.0.0.0", token=None)
    assert (s.port, s.host, s.token) == (0, "0.0.0.0", "t")


def test_defaults() -> None:
    s = Settings.from_env({})
    assert (s.host, s.port, s.token) == ("127.0.0.1", 8765, None)
