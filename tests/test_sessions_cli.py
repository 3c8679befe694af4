"""``echopanel sessions`` on a data directory (in process, the real store)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import srt

from echopanel.cli import main
from echopanel.storage.recording import Recording, session_dir
from echopanel.storage.sqlite import SqliteStore
from echopanel.storage.store import Finalization, SessionRecord, SourceRecord, StoredItem


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    store = SqliteStore(tmp_path / "echopanel.db")
    for sid, status in (("sess_done", "completed"), ("sess_live", "active")):
        store.create_session(SessionRecord(sid, "active", 1.0, ("mic",), 16000), [SourceRecord("mic", 0, 16000)])
        store.add_item(StoredItem(sid, "item_mic_00001", "mic", "We decided to ship.", 500, 2000, "mic:S1"))
        store.add_item(StoredItem(sid, "item_mic_00002", "mic", "I will write it up.", 2500, 4000, "mic:S1"))
        Recording(session_dir(tmp_path, sid) / "mic.pcm", 16000).close()
        if status == "completed":
            store.finalize(sid, Finalization("completed", 2.0, {"summary": [{"text": "We decided to ship."}]}))
    store.close()
    return tmp_path


def test_list_show_export_delete(data_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["sessions", "--data-dir", str(data_dir), "list"]) == 0
    out = capsys.readouterr().out
    assert "sess_done  completed" in out and "sess_live  active" in out
    assert main(["sessions", "--data-dir", str(data_dir), "show", "sess_done", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["status"] == "completed" and [i["speaker"] for i in body["items"]] == ["mic:S1", "mic:S1"]
    assert main(["sessions", "--data-dir", str(data_dir), "show", "sess_done"]) == 0
    assert "[00:00 mic:S1] We decided to ship." in capsys.readouterr().out
    target = tmp_path / "out.srt"
    assert main(["sessions", "--data-dir", str(data_dir), "export", "sess_done", "-f", "srt", "-o", str(target)]) == 0
    assert [c.content for c in srt.parse(target.read_text())] == [
        "[mic:S1] We decided to ship.",
        "[mic:S1] I will write it up.",
    ]
    assert main(["sessions", "--data-dir", str(data_dir), "delete", "sess_live"]) == 1  # still running
    assert "still running" in capsys.readouterr().err
    assert main(["sessions", "--data-dir", str(data_dir), "delete", "sess_done"]) == 0
    assert not session_dir(data_dir, "sess_done").exists() and session_dir(data_dir, "sess_live").exists()
    assert main(["sessions", "--data-dir", str(data_dir), "show", "sess_done"]) == 1
    assert "no stored session" in capsys.readouterr().err


def test_no_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sessions", "--data-dir", str(tmp_path), "list"]) == 1
    assert "no session store" in capsys.readouterr().err


def test_a_bad_setting_is_refused_with_its_name(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "echopanel", "sessions", "--data-dir", str(tmp_path), "list"],
        env={**os.environ, "ECHOPANEL_MAX_SESSIONS": "many"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "ECHOPANEL_MAX_SESSIONS" in out.stderr and "Traceback" not in out.stderr
