"""Every spmwatch wire format in one place: endpoints, topics, line messages, event envelopes.

docs/protocol.md is the human description of what this module encodes and decodes; tests and
every socket user import the names from here instead of repeating strings. JSON only, never pickle.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spmwatch.model import Alert, FrameScores, Line, LineBlock, LineScore, Verdict, reasons_list

PROTOCOL_VERSION = 1

# Default endpoints: loopback only, so nothing is reachable from the network unless configured.
PUB_ENDPOINT = "tcp://127.0.0.1:5560"
LINES_ENDPOINT = "tcp://127.0.0.1:5561"
CONTROL_ENDPOINT = "tcp://127.0.0.1:5562"
ACTIONS_ENDPOINT = "tcp://127.0.0.1:5563"
METRICS_ADDRESS = "127.0.0.1:9560"


ENDPOINT_SCHEMES = ("tcp://", "ipc://", "inproc://")


def tcp_host_port(endpoint: str) -> tuple[str, str] | None:
    """(host, port) of a tcp:// endpoint as written (`[::1]` keeps its brackets), else None."""
    if not endpoint.startswith("tcp://"):
        return None
    host, _, port = endpoint[len("tcp://") :].rpartition(":")
    return host, port


def check_endpoint(name: str, value: str, *, binds: bool = True) -> None:
    """ValueError naming `name` for an endpoint ZeroMQ would refuse or quietly bend: another
    scheme, or a tcp:// port outside 1-65535 (99999 was bound as some other free port). Port
    * (any free one) is for an endpoint that `binds`; one that connects needs the number."""
    if not value.startswith(ENDPOINT_SCHEMES):
        raise ValueError(f"{name} = {value!r} must start with one of {', '.join(ENDPOINT_SCHEMES)}")
    tcp = tcp_host_port(value)
    if tcp is not None:
        port = tcp[1]
        if not (port == "*" and binds) and not (port.isdigit() and 1 <= int(port) <= 65535):
            either = " (or * for any free one)" if binds else ""
            raise ValueError(f"{name} = {value!r}: the port must be 1-65535{either}")


def connect_to(bound: str) -> str:
    """The endpoint a client on this machine connects to for one a daemon binds: a wildcard
    host (`*`, 0.0.0.0, ::) is reached on loopback. ValueError for port *: the number is chosen
    at bind time, and only the daemon's `ready` log knows it."""
    tcp = tcp_host_port(bound)
    if tcp is None:
        return bound
    host, port = tcp
    if port == "*":
        raise ValueError(f"{bound} binds any free port: give the port from the daemon's ready log")
    loopback = {"*": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]", "[*]": "[::1]"}
    return f"tcp://{loopback.get(host, host)}:{port}"


def is_local(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint can only be reached from this machine: ipc://, inproc:// or a
    loopback tcp:// address. A host name or an interface name counts as reachable."""
    tcp = tcp_host_port(endpoint)
    if tcp is None:
        return True
    host = tcp[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


TOPIC_ALERT = "spmwatch.alert"
TOPIC_FRAME = "spmwatch.frame"
TOPIC_LINE = "spmwatch.line"
TOPIC_HEARTBEAT = "spmwatch.heartbeat"
TOPIC_ERROR = "spmwatch.error"
TOPIC_ACTION = "spmwatch.action"
TOPICS: tuple[str, ...] = (
    TOPIC_ALERT,
    TOPIC_FRAME,
    TOPIC_LINE,
    TOPIC_HEARTBEAT,
    TOPIC_ERROR,
    TOPIC_ACTION,
)

# Limits on line messages: a producer cannot make the daemon allocate without bound.
MAX_POINTS = 65_536
MAX_CHANNELS = 32
MAX_LINES = 65_536
MAX_HEADER_BYTES = 65_536
# Largest array frame: one channel of a line or of a block of lines (ZeroMQ's MAXMSGSIZE on the
# receiver drops a producer that sends a bigger one before it is read).
MAX_FRAME_BYTES = MAX_POINTS * 8
MAX_BLOCK_LINES = 256  # lines in one message (`count`)
# Largest scan the line socket opens (n_lines x points x channels as float32): the limits above
# allow 512 GiB (65,536 x 65,536 x 32), and the daemon keeps every line of an open scan.
MAX_SCAN_BYTES = 256 * 2**20
LINE_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int16": np.dtype("<i2"),
    "int32": np.dtype("<i4"),
}

# Scan ids may end up in file names and log keys, so they are restricted to a safe alphabet.
_SCAN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CHANNEL = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


class ProtocolError(ValueError):
    """A message that does not follow docs/protocol.md; the text says what is wrong."""


@dataclass(frozen=True)
class EndOfScan:
    """The producer's word that a scan is finished (`{"v":1,"scan_id":..,"end":true}`)."""

    scan_id: str


def valid_scan_id(value: object) -> str:
    """Return `value` if it is a safe scan id, else raise ProtocolError naming the problem."""
    if not isinstance(value, str) or not _SCAN_ID.fullmatch(value):
        raise ProtocolError(
            f"scan_id {value!r} must be at most 128 letters, digits, dots, underscores or "
            "hyphens, starting with a letter or digit"
        )
    return value


def safe_scan_id(text: str) -> str:
    """A valid scan id made from any text (e.g. a file stem): unsafe characters become '_'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip("._-")[:128]
    return cleaned or "scan"


# ---------------------------------------------------------------------------------------------
# Line socket (PUSH -> PULL): [JSON header, one raw little-endian array per channel]
# ---------------------------------------------------------------------------------------------


def encode_line(line: Line, dtype: str = "float32") -> list[bytes]:
    """Frames for one line: the JSON header, then one raw array per channel in header order."""
    return encode_lines([line], dtype)


def encode_lines(lines: Sequence[Line], dtype: str = "float32") -> list[bytes]:
    """Frames for a block of lines of one scan, consecutive in acquisition order, in one message.

    A producer that is behind (or reads several lines at once) pays the header and the message
    once per block instead of once per line. One line encodes exactly as `encode_line`.
    """
    _check_dtype(dtype)
    if not 1 <= len(lines) <= MAX_BLOCK_LINES:
        raise ProtocolError(f"a block holds 1..{MAX_BLOCK_LINES} lines, not {len(lines)}")
    first = lines[0]
    step = _block_step(lines)
    wire = LINE_DTYPES[dtype]
    names = list(first.channels)
    header: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "scan_id": valid_scan_id(first.scan_id),
        "line": first.index,
        "position": first.position,
        "n_lines": first.n_lines,
        "points": first.points,
        "channels": names,
        "dtype": dtype,
        "meta": _jsonable_meta(first.meta),
    }
    if len(lines) > 1:
        header["count"] = len(lines)
        header["step"] = step
    frames = [json.dumps(header, separators=(",", ":")).encode()]
    for name in names:
        rows = [line.channels[name] for line in lines]
        frames.append(np.ascontiguousarray(rows, dtype=wire).tobytes())
    return frames


def _block_step(lines: Sequence[Line]) -> int:
    """+1 or -1: how the row index moves from one line of a block to the next."""
    first = lines[0]
    step = 1 if len(lines) == 1 else lines[1].index - first.index
    for k, line in enumerate(lines):
        same = (line.scan_id, line.n_lines, list(line.channels)) == (
            first.scan_id,
            first.n_lines,
            list(first.channels),
        )
        if not same or line.position != first.position + k or line.index != first.index + k * step:
            raise ProtocolError(
                "a block's lines must share scan_id, n_lines and channels, with consecutive "
                "positions and indices moving by +1 or -1"
            )
    if step not in (1, -1):
        raise ProtocolError(f"a block's indices must move by +1 or -1, not {step}")
    return step


def encode_end(scan_id: str) -> list[bytes]:
    """The single-frame message that ends a scan."""
    payload = {"v": PROTOCOL_VERSION, "scan_id": valid_scan_id(scan_id), "end": True}
    return [json.dumps(payload, separators=(",", ":")).encode()]


def decode_line_message(frames: Sequence[bytes], source: str = "socket") -> LineBlock | EndOfScan:
    """Check and decode a line-socket message into its block of lines (one, or `count`), or
    an end of scan; raise ProtocolError with the reason otherwise."""
    if not frames:
        raise ProtocolError("empty message")
    header = _decode_json(frames[0], "header")
    _check_version(header)
    scan_id = valid_scan_id(header.get("scan_id"))
    if "end" in header:
        if header["end"] is not True:
            raise ProtocolError(f"end must be true (an end-of-scan message), got {header['end']!r}")
        if len(frames) != 1:
            raise ProtocolError(f"end-of-scan message has {len(frames)} frames, expected 1")
        return EndOfScan(scan_id)

    index = _int_field(header, "line", 0, MAX_LINES - 1)
    n_lines = _int_field(header, "n_lines", 1, MAX_LINES)
    if index >= n_lines:
        raise ProtocolError(f"line {index} is outside n_lines {n_lines}")
    points = _int_field(header, "points", 1, MAX_POINTS)
    position = _int_field(header, "position", 0, n_lines - 1) if "position" in header else index
    count = _int_field(header, "count", 1, MAX_BLOCK_LINES) if "count" in header else 1
    step = _int_field(header, "step", -1, 1) if "step" in header else 1
    if step == 0:
        raise ProtocolError("step must be 1 or -1")
    last = index + (count - 1) * step
    if position + count > n_lines or not 0 <= last < n_lines:
        ends = f"line {last}" if last < 0 or last >= n_lines else f"position {position + count - 1}"
        raise ProtocolError(
            f"a block of {count} lines from line {index} (step {step}) ends at {ends}, outside "
            f"0..{n_lines - 1} (n_lines {n_lines})"
        )
    dtype = header.get("dtype", "float32")
    _check_dtype(dtype)
    names = _channel_names(header.get("channels"))
    if len(frames) != 1 + len(names):
        raise ProtocolError(
            f"message has {len(frames)} frames, expected 1 header + {len(names)} channels"
        )
    wire = LINE_DTYPES[dtype]
    expected = count * points * wire.itemsize
    if expected > MAX_FRAME_BYTES:
        raise ProtocolError(
            f"{count} lines x {points} points of {dtype} make {expected} bytes per channel, "
            f"more than {MAX_FRAME_BYTES}"
        )
    # float32 on the wire is used as it is (read-only views of the frame, no copy); other
    # dtypes are converted to float32 copies.
    native = wire == np.float32
    blocks: list[np.ndarray] = []
    for name, frame in zip(names, frames[1:], strict=True):
        if len(frame) != expected:
            lines = f"{count} x {points}" if count > 1 else f"{points}"
            raise ProtocolError(
                f"channel {name!r} has {len(frame)} bytes, expected {expected} "
                f"({lines} points of {dtype})"
            )
        values = np.frombuffer(frame, dtype=wire).reshape(count, points)
        blocks.append(values if native else values.astype(np.float32))
    meta = header.get("meta", {})
    if not isinstance(meta, dict):
        raise ProtocolError("meta must be a JSON object")
    meta = _jsonable_meta(meta)
    channels = dict(zip(names, blocks, strict=True))
    return LineBlock(scan_id, index, position, n_lines, channels, step, meta, source)


# ---------------------------------------------------------------------------------------------
# Published events (PUB -> SUB): [topic, JSON payload]
# ---------------------------------------------------------------------------------------------


def encode_event(topic: str, payload: Mapping[str, Any]) -> list[bytes]:
    """Frames for one published event; `payload` already carries v, seq, time, scan_id, source."""
    if topic not in TOPICS:
        raise ProtocolError(f"unknown topic {topic!r}")
    return [topic.encode(), _EVENT_ENCODER.encode(payload).encode()]


def decode_event(frames: Sequence[bytes]) -> tuple[str, dict[str, Any]]:
    """Check and decode a published event into (topic, payload)."""
    if len(frames) != 2:
        raise ProtocolError(f"event has {len(frames)} frames, expected 2 (topic, JSON)")
    try:
        topic = frames[0].decode("ascii")
    except UnicodeDecodeError as exc:
        raise ProtocolError("topic is not ASCII") from exc
    if topic not in TOPICS:
        raise ProtocolError(f"unknown topic {topic!r}")
    payload = _decode_json(frames[1], "payload")
    _check_version(payload)
    seq = payload.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ProtocolError("payload has no non-negative integer 'seq'")
    return topic, payload


# Fields of each published topic (the envelope v/seq/time/scan_id/source is added by the
# publisher); docs/protocol.md shows an example of each.

SAVED_FRAME = "saved_frame"  # `origin` of events computed from a whole saved .ibw file
LIVE = "live"  # `origin` of events computed line by line as the scan ran


@dataclass(frozen=True)
class ScanInstance:
    """Which scan an alert or frame is about, beyond its name: scan names repeat (Asylum resets
    its suffix, a producer reuses an id after its end message, the scope follower counts from
    scope-1 again after a restart), so `started` tells a new scan from an old one of that name.

    `started` is when the scan began as the daemon saw it: its first line's arrival (live), or
    the .ibw file's modification time (saved frame, so the same file scored again after a
    restart is the same scan); `file` is a saved frame's path inside its watched folder.
    """

    origin: str
    started: float
    file: str | None = None

    def fields(self) -> dict[str, Any]:
        return {"origin": self.origin, "scan_started": self.started, "file": self.file}


def alert_fields(
    alert: Alert, verdict: Verdict, action: str, lines_seen: int, scan: ScanInstance
) -> dict[str, Any]:
    """spmwatch.alert: where the failure is, how bad, the classifier's view and what to do."""
    return {
        **alert.to_dict(),
        "probability": round(float(verdict.probability), 4),
        "threshold": round(float(verdict.threshold), 4),
        "model": verdict.model,
        "reasons": reasons_list(verdict.reasons),
        "action": action,
        "lines_seen": lines_seen,
        **scan.fields(),
    }


def frame_fields(
    frame: FrameScores, verdict: Verdict, closed_by: str, scan: ScanInstance
) -> dict[str, Any]:
    """spmwatch.frame: the verdict of a finished (or abandoned) frame with its events."""
    return {
        **verdict.to_dict(),
        "events": [event.to_dict() for event in frame.events],
        "alert": frame.alert.to_dict() if frame.alert else None,
        "lines": frame.n_lines,
        "expected_lines": frame.expected_lines,
        "partial": frame.n_lines < frame.expected_lines,
        "closed_by": closed_by,
        **scan.fields(),
        "dead_channels": frame.dead_channels,
    }


def line_fields(score: LineScore) -> dict[str, Any]:
    """spmwatch.line: one line's score as soon as it is computed."""
    return {
        "line": score.index,
        "position": score.position,
        "score": round(float(score.score), 4),
        "flagged": score.flagged,
        "kind": score.kind,
    }


def error_fields(subject: str, reason: str) -> dict[str, Any]:
    """spmwatch.error: something the daemon survived but an operator should hear about."""
    return {"subject": subject, "reason": reason}


class SeqTracker:
    """Follows each publisher's per-topic seq and says when messages went missing.

    Streams are keyed by topic and the payload's optional "daemon" field, so subscribers of a
    proxy that merges several daemons need each daemon to send one. seq 0 after a higher seq is
    a publisher restart, not a gap; the first message seen only sets the baseline.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], int] = {}

    @staticmethod
    def _stream(topic: str, payload: Mapping[str, Any]) -> tuple[str, str]:
        return topic, str(payload.get("daemon", ""))

    def restarted(self, topic: str, payload: Mapping[str, Any]) -> bool:
        """Whether this message (not yet recorded by `gap`) takes the stream's seq back: its
        publisher restarted (one publisher's messages arrive in order), the first messages
        after the restart perhaps missed. A person following the stream wants to know."""
        last = self._last.get(self._stream(topic, payload))
        return last is not None and int(payload["seq"]) <= last

    def gap(self, topic: str, payload: Mapping[str, Any]) -> str | None:
        """Record this message; return why it does not follow the previous one, or None."""
        key = self._stream(topic, payload)
        seq = int(payload["seq"])
        last = self._last.get(key)
        self._last[key] = seq
        if last is None or seq == last + 1 or seq == 0:
            return None
        if seq > last + 1:
            return f"seq gap: expected {last + 1}, got {seq} ({seq - last - 1} missing)"
        return f"seq went back from {last} to {seq}: reordered, or a restart's first ones missed"


# What the responder did about an alert: an instrument action, a notice, a skipped alert
# (stale, duplicate, debounced, capped) or a resync after a gap in the alerts' seq.
ACTIONS: tuple[str, ...] = ("stop_scan", "withdraw", "rescan", "notify_only", "skip", "resync")
OUTCOMES: tuple[str, ...] = ("ok", "failed", "skipped")


def action_fields(
    action: str,
    outcome: str,
    reason: str,
    alert: Mapping[str, Any],
    igor_commands: Sequence[str] = (),
    scan_status: float | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """spmwatch.action: one responder decision about one alert, and what Igor reported back."""
    if action not in ACTIONS or outcome not in OUTCOMES:
        raise ProtocolError(f"action {action!r} / outcome {outcome!r} is not a known pair")
    return {
        "action": action,
        "outcome": outcome,
        "ok": outcome == "ok",
        "reason": reason,
        "alert_seq": alert.get("seq"),
        "alert_time": alert.get("time"),
        "alert_source": alert.get("source"),
        "kind": alert.get("kind"),
        "severity": alert.get("severity"),
        "line": alert.get("line"),
        "igor_commands": list(igor_commands),
        "scan_status": scan_status,
        "dry_run": dry_run,
    }


# ---------------------------------------------------------------------------------------------
# Control socket (REQ -> REP): JSON request {"v":1,"cmd":...}, JSON reply {"v":1,"ok":...}
# ---------------------------------------------------------------------------------------------

CONTROL_COMMANDS: tuple[str, ...] = ("status", "pause", "resume", "reload-model")


def encode_request(cmd: str) -> bytes:
    return json.dumps({"v": PROTOCOL_VERSION, "cmd": _known_command(cmd)}).encode()


def decode_request(frame: bytes) -> str:
    request = _decode_json(frame, "request")
    _check_version(request)
    return _known_command(request.get("cmd"))


def encode_reply(ok: bool, **fields: Any) -> bytes:
    body = {"v": PROTOCOL_VERSION, "ok": ok, **fields}
    return json.dumps(body, allow_nan=False, default=_json_default).encode()


def decode_reply(frame: bytes) -> dict[str, Any]:
    reply = _decode_json(frame, "reply")
    _check_version(reply)
    return reply


# ---------------------------------------------------------------------------------------------


def _known_command(cmd: object) -> str:
    if cmd not in CONTROL_COMMANDS:
        known = ", ".join(CONTROL_COMMANDS)
        raise ProtocolError(f"unknown control command {cmd!r}; known: {known}")
    return str(cmd)


def _decode_json(frame: bytes, what: str) -> dict[str, Any]:
    if len(frame) > MAX_HEADER_BYTES:
        raise ProtocolError(f"{what} is {len(frame)} bytes, more than {MAX_HEADER_BYTES}")
    try:
        value = json.loads(frame)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value


def _check_version(obj: Mapping[str, Any]) -> None:
    if obj.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {obj.get('v')!r} is not {PROTOCOL_VERSION}")


def _check_dtype(dtype: object) -> None:
    if dtype not in LINE_DTYPES:
        raise ProtocolError(f"dtype {dtype!r} is not one of {', '.join(sorted(LINE_DTYPES))}")


def _int_field(header: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = header.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"{key} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ProtocolError(f"{key} = {value} is outside {low}..{high}")
    return value


def _channel_names(value: object) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ProtocolError("channels must be a non-empty list of names")
    if len(value) > MAX_CHANNELS:
        raise ProtocolError(f"{len(value)} channels, more than {MAX_CHANNELS}")
    for name in value:
        if not isinstance(name, str) or not _CHANNEL.fullmatch(name):
            raise ProtocolError(f"channel name {name!r} is not a valid channel name")
    if len(set(value)) != len(value):
        raise ProtocolError("channel names repeat")
    return value


def _jsonable_meta(meta: Mapping[str, object]) -> dict[str, float | int | str]:
    """Keep the scalar, finite entries of scan metadata: what survives a JSON round trip."""
    out: dict[str, float | int | str] = {}
    for key, value in meta.items():
        kind = type(value)  # exact-type fast path: every line header carries the meta
        if kind is str or kind is int:
            out[str(key)] = value  # type: ignore[assignment]
        elif kind is float:
            if math.isfinite(value):  # type: ignore[arg-type]
                out[str(key)] = value  # type: ignore[assignment]
        elif isinstance(value, bool | np.bool_ | int | np.integer):
            out[str(key)] = int(value)
        elif isinstance(value, float | np.floating) and math.isfinite(value):
            out[str(key)] = float(value)
        elif isinstance(value, str):
            out[str(key)] = value
    return out


def _json_default(value: object) -> object:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# One encoder for every published event: json.dumps with options builds a new one per call,
# which was a measurable share of the per-line cost.
_EVENT_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_json_default)
