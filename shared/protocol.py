"""The wire protocol between the gateway (main process) and the model workers.

Every ZeroMQ message is two frames after the routing identity:
``[type, payload]``, where ``type`` is one byte (:class:`MsgType`) and
``payload`` is a msgpack-encoded :class:`msgspec.Struct`. Nothing is pickled.

The main process binds one ROUTER socket; each worker connects a DEALER whose
identity is its model name (UTF-8), so a restarted worker takes its name back
(``ROUTER_HANDOVER``).
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec


class MsgType(enum.IntEnum):
    # main -> worker
    REQUEST = 0x01
    ABORT = 0x02
    PROBE = 0x03
    SHUTDOWN = 0x04
    # worker -> main
    HELLO = 0x10
    PROGRESS = 0x11
    READY = 0x12
    CHUNK = 0x13
    RESPONSE = 0x14
    ERROR = 0x15
    PROBE_RESULT = 0x16
    STATS = 0x17


class Endpoint(enum.Enum):
    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDINGS = "embeddings"  # OpenAI /v1/embeddings, on a pooling model
    RESPONSES = "responses"  # OpenAI /v1/responses, on a generating model


class Request(msgspec.Struct, frozen=True):
    """An OpenAI request body, passed through unparsed to vLLM's serving layer."""

    request_id: str
    endpoint: Endpoint
    body: bytes
    stream: bool


class Abort(msgspec.Struct, frozen=True):
    request_id: str


class Probe(msgspec.Struct, frozen=True):
    probe_id: int


class Shutdown(msgspec.Struct, frozen=True):
    reason: str = ""


class Hello(msgspec.Struct, frozen=True):
    """A worker's first message: who it is. Nothing is routed to it until READY."""

    model: str
    pid: int


class Stage(enum.Enum):
    """Where a worker is in its start-up, as ``/health`` and ``zoe-vllm up`` show it.

    The worker reports PROVISIONING, LOADING and WARMING_UP (:class:`Progress`); the
    supervisor records the others itself."""

    NONE = ""
    SPAWNING = "spawning"  # the process is being started
    CONNECTED = "connected"  # its first message (Hello) arrived
    PROVISIONING = "provisioning"  # building the weights directory (first start only)
    LOADING = "loading"  # the vLLM engine is loading the model
    WARMING_UP = "warming up"  # engine loaded; warm-up generations
    READY = "ready"
    DOWN = "down"  # a remote backend that failed its probes


class Progress(msgspec.Struct, frozen=True):
    """A loading step, shown by ``zoe-vllm up`` and ``/health`` while loading."""

    model: str
    stage: Stage
    detail: str = ""


class Ready(msgspec.Struct, frozen=True):
    model: str
    max_model_len: int
    load_seconds: float
    warmup_seconds: float


class Chunk(msgspec.Struct, frozen=True):
    """One or more ready-to-send Server-Sent-Events strings from vLLM."""

    request_id: str
    data: str


class Response(msgspec.Struct, frozen=True):
    """A complete (non-streaming) response: status and JSON body."""

    request_id: str
    status: int
    body: bytes


class ErrorKind(enum.Enum):
    BAD_REQUEST = "bad_request"  # the client's fault: 4xx
    OOM = "oom"  # out of memory: eligible for the fallback chain
    ENGINE_DEAD = "engine_dead"  # the worker cannot serve any more
    BUSY = "busy"  # every slot taken and the queue full (or waited out): 503, try later
    INTERNAL = "internal"


class Error(msgspec.Struct, frozen=True):
    """A request failed. ``streamed`` says whether any chunk already went out."""

    request_id: str
    kind: ErrorKind
    status: int
    message: str
    type: str = ""  # an OpenAI error type; empty: derived from the status
    param: str | None = None
    code: str | None = None
    streamed: bool = False


class ProbeResult(msgspec.Struct, frozen=True):
    probe_id: int
    ok: bool
    seconds: float
    detail: str = ""


class Stats(msgspec.Struct, frozen=True):
    """Engine statistics relayed from vLLM, plus the worker's own counts."""

    model: str
    running: int
    waiting: int
    kv_cache_usage: float = 0.0
    prefix_cache_hit_rate: float = 0.0
    active_requests: int = 0
    # Since this worker process started (warm-up and health probes included).
    prompt_tokens: int = 0
    generation_tokens: int = 0


Message = (
    Request | Abort | Probe | Shutdown | Hello | Progress | Ready | Chunk | Response | Error
    | ProbeResult | Stats
)

_TYPES: dict[MsgType, type[Any]] = {
    MsgType.REQUEST: Request,
    MsgType.ABORT: Abort,
    MsgType.PROBE: Probe,
    MsgType.SHUTDOWN: Shutdown,
    MsgType.HELLO: Hello,
    MsgType.PROGRESS: Progress,
    MsgType.READY: Ready,
    MsgType.CHUNK: Chunk,
    MsgType.RESPONSE: Response,
    MsgType.ERROR: Error,
    MsgType.PROBE_RESULT: ProbeResult,
    MsgType.STATS: Stats,
}
_TAGS: dict[type[Any], bytes] = {cls: bytes([tag]) for tag, cls in _TYPES.items()}
_DECODERS: dict[int, msgspec.msgpack.Decoder[Any]] = {
    int(tag): msgspec.msgpack.Decoder(cls) for tag, cls in _TYPES.items()
}
_ENCODER = msgspec.msgpack.Encoder()


class ProtocolError(ValueError):
    """A frame that is not a valid message of this protocol."""


def encode(msg: Message) -> list[bytes]:
    """Return the ``[type, payload]`` frames for ``msg``."""
    return [_TAGS[type(msg)], _ENCODER.encode(msg)]


def decode(type_frame: bytes, payload: bytes) -> Message:
    """Decode one message; raises :class:`ProtocolError` on anything malformed."""
    if len(type_frame) != 1:
        raise ProtocolError(f"type frame must be 1 byte, got {len(type_frame)}")
    decoder = _DECODERS.get(type_frame[0])
    if decoder is None:
        raise ProtocolError(f"unknown message type 0x{type_frame[0]:02x}")
    try:
        msg: Message = decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise ProtocolError(str(exc)) from exc
    return msg
