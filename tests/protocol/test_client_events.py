import pytest

from echopanel.protocol import client_events as ce
from echopanel.protocol.errors import ErrorCode, ProtocolError


def parse_error(text: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        ce.parse_client_event(text)
    return info.value


def test_defaults() -> None:
    event, event_id = ce.parse_client_event('{"type": "session.create", "event_id": "e1"}')
    assert isinstance(event, ce.SessionCreate) and event_id == "e1"
    assert event.session.sources == ["mic", "system"] and event.session.sample_rate == 16000


@pytest.mark.parametrize(
    ("text", "code", "param"),
    [
        ("{nope", ErrorCode.INVALID_JSON, None),
        ("[1, 2]", ErrorCode.INVALID_JSON, None),
        ('{"event_id": "x"}', ErrorCode.INVALID_EVENT, "type"),
        ('{"type": "teleport"}', ErrorCode.UNKNOWN_EVENT, "type"),
        ('{"type": "input_audio_buffer.append", "source": "mic"}', ErrorCode.INVALID_EVENT, "audio"),
        ('{"type": "input_audio_buffer.append", "audio": 5}', ErrorCode.INVALID_EVENT, "audio"),
        ('{"type": "session.create", "session": {"sample_rate": "16000"}}', ErrorCode.INVALID_EVENT, None),
        ('{"type": "session.create", "session": {"sources": ["mic", "mic"]}}', ErrorCode.INVALID_EVENT, None),
        ('{"type": "session.create", "session": {"sources": []}}', ErrorCode.INVALID_EVENT, None),
    ],
)
def test_bad_events(text: str, code: ErrorCode, param: str | None) -> None:
    err = parse_error(text)
    assert err.code == code
    if param is not None:
        assert err.param == param


def test_event_id_is_kept_on_errors() -> None:
    assert parse_error('{"type": "teleport", "event_id": "abc"}').event_id == "abc"
