from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import protocol as p

SAMPLES: list[p.Message] = [
    p.Request(request_id="r1", endpoint=p.Endpoint.CHAT, body=b'{"messages": []}', stream=True),
    p.Abort(request_id="r1"),
    p.Probe(probe_id=7),
    p.Shutdown(reason="bye"),
    p.Hello(model="m", pid=42),
    p.Progress(model="m", stage=p.Stage.LOADING, detail="x"),
    p.Ready(model="m", max_model_len=2048, load_seconds=1.5, warmup_seconds=0.5),
    p.Chunk(request_id="r1", data="data: {}\n\n"),
    p.Response(request_id="r1", status=200, body=b"{}"),
    p.Error(request_id="r1", kind=p.ErrorKind.OOM, status=503, message="oom", streamed=True),
    p.ProbeResult(probe_id=7, ok=False, seconds=0.1, detail="timeout"),
    p.Stats(model="m", running=1, waiting=2, kv_cache_usage=0.5, prefix_cache_hit_rate=0.25),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: p.Message) -> None:
    frames = p.encode(msg)
    assert len(frames) == 2 and len(frames[0]) == 1
    assert p.decode(*frames) == msg


def test_every_message_type_has_a_tag() -> None:
    tags = {p.encode(m)[0] for m in SAMPLES}
    assert len(tags) == len(SAMPLES) == len(p.MsgType)


def test_payload_is_msgpack_not_pickle() -> None:
    _, payload = p.encode(p.Abort(request_id="abc"))
    assert msgspec.msgpack.decode(payload) == {"request_id": "abc"}


@pytest.mark.parametrize("type_frame,payload", [
    (b"", b""), (b"\x01\x02", b""), (b"\xff", b"\x80"),
    (bytes([p.MsgType.ABORT]), b"\xc1"),  # never-used msgpack byte
    (bytes([p.MsgType.ABORT]), msgspec.msgpack.encode({"request_id": 5})),  # wrong type
])
def test_malformed_frames_raise_protocol_error(type_frame: bytes, payload: bytes) -> None:
    with pytest.raises(p.ProtocolError):
        p.decode(type_frame, payload)


@given(st.binary(max_size=1), st.binary(max_size=64))
def test_decode_never_raises_anything_else(type_frame: bytes, payload: bytes) -> None:
    # Anything but ProtocolError (or success) fails the test.
    with contextlib.suppress(p.ProtocolError):
        p.decode(type_frame, payload)
