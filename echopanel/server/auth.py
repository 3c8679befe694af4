"""Bearer-token check: ``Authorization: Bearer T`` (or ``Token T``, as Deepgram's clients send it) or, for browsers,
the subprotocol ``echopanel.token.T``."""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence

TOKEN_SUBPROTOCOL = "echopanel.token."
PROTOCOL_NAME = "echopanel.v1"


def presented_token(headers: Mapping[str, str], subprotocols: Sequence[str]) -> str | None:
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():  # "Token KEY": Deepgram's clients
        return value.strip()
    for proto in subprotocols:
        if proto.startswith(TOKEN_SUBPROTOCOL):
            return proto[len(TOKEN_SUBPROTOCOL) :]
    return None


def authorized(expected: str | None, headers: Mapping[str, str], subprotocols: Sequence[str]) -> bool:
    if not expected:
        return True
    given = presented_token(headers, subprotocols)
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
