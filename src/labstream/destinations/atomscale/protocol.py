"""The Atomscale HTTP API as the official SDK speaks it, without I/O.

Every path, header and JSON key here follows ``specs/atomscale-http-api.md``. This module builds
requests and reads answers; whoever holds a connection sends them: the sink (libcurl or an
injected httpx transport) and ``labstream check``. So the rules are written once:

- :func:`error_of`: what an answer means (transient, a refusal, or fine);
- :func:`json_of`, :func:`clock_sample`: answers that do not follow the API become
  :class:`~labstream.errors.MalformedAnswerError`, never a ``KeyError``;
- :func:`create_stream`: stream creation, with its sample and tag lookups and its clean-up, as a
  generator of requests (h11's approach: the caller performs each one and sends the answer back).

Bodies are serialised with orjson straight from numpy arrays (NaN/inf become ``null``, as the SDK
writes them).
"""

from __future__ import annotations

import email.utils
import logging
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..._core.chunk import Chunk, RawSeries, as_float_array
from ..._core.clock import TimeSample
from ..._core.timebase import Float64Array
from ...errors import (
    DestinationError,
    MalformedAnswerError,
    RejectedError,
    TransientDestinationError,
)
from .http import HttpAnswer, TransportError

__all__ = [
    "CHUNK_PATH",
    "DEFAULT_ENDPOINT",
    "MULTI_CHUNK_PATH",
    "NAME",
    "Request",
    "chunk_body",
    "chunk_content",
    "chunk_path",
    "clock_sample",
    "create_stream",
    "error_of",
    "finalize_request",
    "json_of",
    "normalise_tags",
    "retry_after",
    "series_content",
]

log = logging.getLogger("labstream.atomscale")

DEFAULT_ENDPOINT = "https://api.atomscale.ai"
NAME = "atomscale"
_TRANSIENT_STATUSES = frozenset({408, 429})
_MAX_DETAIL = 2000
CHUNK_PATH = "/tool-state/stream/chunk"
MULTI_CHUNK_PATH = "/tool-state/stream/chunk/multi"


def retry_after(value: str | None) -> float | None:
    """Parse ``Retry-After`` (delta seconds or an HTTP date) into seconds from now."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def chunk_body(chunk: Chunk) -> dict[str, Any]:
    """The JSON body of a chunk upload, keys as the SDK writes them (``units`` left out if None)."""
    if chunk.multi:
        channels: dict[str, dict[str, Any]] = {}
        # Channels sharing timestamps (one instrument clock) share their conversion and their
        # JSON: formatting the same floats once per channel was most of a channel's cost.
        seconds: dict[int, orjson.Fragment] = {}
        for ch in chunk.channels:
            ts = seconds.get(id(ch.timestamps_ns))
            if ts is None:
                ts = seconds[id(ch.timestamps_ns)] = orjson.Fragment(
                    orjson.dumps(ch.timestamps_s(), option=orjson.OPT_SERIALIZE_NUMPY)
                )
            spec: dict[str, Any] = {"timestamps": ts, "values": ch.values}
            if ch.units is not None:
                spec["units"] = ch.units
            channels[ch.name] = spec
        return {"data_id": chunk.data_id, "chunk_index": chunk.chunk_index, "channels": channels}
    (ch,) = chunk.channels
    return _one_channel(
        chunk.data_id, chunk.chunk_index, ch.name, ch.units, ch.timestamps_s(), ch.values
    )


def _one_channel(
    data_id: str,
    chunk_index: int,
    name: str,
    units: str | None,
    timestamps_s: Float64Array,
    values: Float64Array,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "data_id": data_id,
        "chunk_index": chunk_index,
        "channel_name": name,
        "timestamps": timestamps_s,
        "values": values,
    }
    if units is not None:
        body["units"] = units
    return body


def chunk_path(chunk: Chunk) -> str:
    return MULTI_CHUNK_PATH if chunk.multi else CHUNK_PATH


def chunk_content(chunk: Chunk) -> bytes:
    """The request body of a chunk upload, as bytes."""
    return orjson.dumps(chunk_body(chunk), option=orjson.OPT_SERIALIZE_NUMPY)


def series_content(data_id: str, chunk_index: int, series: RawSeries) -> bytes:
    """The body of a one-channel chunk straight from its validated input, for a chunk with no
    clock offset: the bytes :func:`chunk_content` makes once it is built, since seconds -> ns ->
    seconds gives back every timestamp validation lets through (``timebase.py``). It skips the
    build and the two conversions, a large share of ``run()``'s time per chunk."""
    body = _one_channel(
        data_id,
        chunk_index,
        series.name,
        series.units,
        as_float_array(series.timestamps_s),
        as_float_array(series.values),
    )
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def normalise_tags(tags: Iterable[str]) -> list[str]:
    """Trim, drop empties, drop case-insensitive duplicates (keeping the first spelling)."""
    seen: set[str] = set()
    out: list[str] = []
    for tag in tags:
        name = tag.strip()
        if name and name.casefold() not in seen:
            seen.add(name.casefold())
            out.append(name)
    return out


@dataclass(frozen=True, slots=True)
class Request:
    """One request to make. ``body`` is serialised as JSON; ``data_id`` and ``chunk_index`` name
    what it concerns in errors."""

    method: str
    path: str
    body: object = None
    headers: Mapping[str, str] = field(default_factory=dict)
    data_id: str | None = None
    chunk_index: int | None = None

    @property
    def content(self) -> bytes | None:
        if self.body is None:
            return None
        return orjson.dumps(self.body, option=orjson.OPT_SERIALIZE_NUMPY)


def error_of(
    answer: HttpAnswer | TransportError,
    request: Request,
    scrub: Callable[[str], str] = lambda text: text,
) -> DestinationError | None:
    """The labstream error an answer (or no answer) to ``request`` means; None for a 2xx.

    A transport error, timeout, 5xx, 408 or 429 is transient; any other non-2xx is a refusal,
    with the response body as the reason. ``scrub`` removes what must not be shown (the key).
    """
    if isinstance(answer, HttpAnswer) and answer.status < 300:
        return None  # first: most answers, and nothing below is needed for them
    what = f"{request.method} {request.path}"
    ctx: dict[str, Any] = {
        "destination": NAME,
        "data_id": request.data_id,
        "chunk_index": request.chunk_index,
    }
    if isinstance(answer, TransportError):
        error = TransientDestinationError(
            f"{what} {'timed out' if answer.timed_out else 'failed'}",
            detail=scrub(str(answer)),
            timed_out=answer.timed_out,
            **ctx,
        )
        error.__cause__ = answer  # raised later, by the caller or the delivery runner
        return error
    status = answer.status
    detail = scrub(answer.text[:_MAX_DETAIL])
    if status >= 500 or status in _TRANSIENT_STATUSES:
        return TransientDestinationError(
            f"{what} answered {status}",
            status=status,
            detail=detail,
            retry_after=retry_after(answer.headers.get("Retry-After")),
            **ctx,
        )
    return RejectedError(f"{what} was refused", status=status, detail=detail, **ctx)


def json_of(answer: HttpAnswer, what: str) -> Any:
    """The answer's JSON.

    Raises:
        MalformedAnswerError: the body is not JSON.
    """
    try:
        return orjson.loads(answer.body)
    except orjson.JSONDecodeError as exc:
        raise MalformedAnswerError(
            f"{what} answered something that is not JSON",
            destination=NAME,
            status=answer.status,
            detail=answer.text[:200],
        ) from exc


CLOCK_REQUEST = Request("GET", "/gateway/time", headers={"Cache-Control": "no-store"})


def clock_sample(answer: HttpAnswer, sent: float, received: float) -> TimeSample:
    """One NTP-style exchange from ``GET /gateway/time``'s answer: (sent, server received,
    server transmitted, received), in seconds.

    Raises:
        MalformedAnswerError: the answer lacks the two server times.
    """
    body = json_of(answer, "GET /gateway/time")
    try:
        server_rx = float(body["receivedAtUnixMs"]) / 1000.0
        server_tx = float(body["transmittedAtUnixMs"]) / 1000.0
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedAnswerError(
            "GET /gateway/time did not answer with receivedAtUnixMs and transmittedAtUnixMs",
            destination=NAME,
            status=answer.status,
            detail=answer.text[:200],
        ) from exc
    return sent, server_rx, server_tx, received


def finalize_request(data_id: str) -> Request:
    return Request("POST", f"/tool-state/stream/{data_id}/finalize", data_id=data_id)


def create_stream(
    *,
    stream_name: str | None,
    synth_source_id: int | None,
    points_per_chunk: int,
    project_id: str | None,
    physical_sample: str | None,
    tags: Sequence[str],
) -> Generator[Request, HttpAnswer, str]:
    """Create the stream and make its links; return its data_id.

    The sample and tags are resolved (and created if new) before the stream exists, so a bad one
    creates nothing. If a link fails after creation, the new stream is finalized and the error
    names its data_id, as the SDK does.
    """
    sample_id = (yield from _resolve_sample(physical_sample)) if physical_sample else None
    tag_ids = (yield from _resolve_tags(tags)) if tags else []
    body: dict[str, Any] = {"stream_name": stream_name}
    if synth_source_id is not None:
        body["synth_source_id"] = synth_source_id
    body["points_per_chunk"] = points_per_chunk
    body["project_id"] = project_id
    answer = yield Request("POST", "/tool-state/stream/initialize", body=body)
    created = json_of(answer, "initialize")
    data_id = created.get("data_id") if isinstance(created, dict) else None
    if not isinstance(data_id, str) or not data_id:
        raise MalformedAnswerError(
            "initialize answered without a data_id", destination=NAME, detail=answer.text[:200]
        )
    try:
        if sample_id is not None:
            yield Request(
                "POST",
                "/data_entries/physical_sample",
                body={"data_ids": [data_id], "physical_sample_id": sample_id},
                data_id=data_id,
            )
            if project_id:
                yield Request(
                    "POST",
                    f"/projects/{project_id}/configuration/tracking_samples",
                    body={"physical_sample_id": sample_id, "set_active": True},
                    data_id=data_id,
                )
        if tag_ids:
            yield Request(
                "POST",
                "/tags/data-items/",
                body={"data_ids": [data_id], "tag_ids": tag_ids},
                data_id=data_id,
            )
    except DestinationError as exc:
        try:
            yield finalize_request(data_id)
        except DestinationError as fin_exc:
            log.error("could not finalize stream %s after a failed link: %s", data_id, fin_exc)
        raise DestinationError(
            f"stream {data_id} was created but linking failed, so it was finalized",
            destination=NAME,
            data_id=data_id,
            detail=str(exc),
        ) from exc
    return data_id


def _resolve_sample(sample: str) -> Generator[Request, HttpAnswer, str]:
    wanted = sample.strip()
    listing = json_of((yield Request("GET", "/physical_samples/")), "list physical samples")
    known = listing if isinstance(listing, list) else []
    if _is_uuid(wanted):
        for item in known:
            if str(item.get("id", "")).lower() == wanted.lower():
                return str(item["id"])
        raise RejectedError(
            f"physical sample {wanted} does not exist", destination=NAME, status=404
        )
    for item in known:
        if str(item.get("name", "")).strip().casefold() == wanted.casefold():
            return str(item["id"])
    try:
        answer = yield Request("POST", "/physical_samples/", body={"name": wanted})
    except RejectedError as exc:
        if exc.status == 409 and exc.detail:  # created meanwhile: the answer names it
            try:
                existing = orjson.loads(exc.detail).get("detail", {})
            except (orjson.JSONDecodeError, AttributeError):
                existing = None
            if isinstance(existing, dict) and existing.get("physical_sample_id"):
                return str(existing["physical_sample_id"])
        raise
    created = json_of(answer, "create physical sample")
    sample_id = created.get("physical_sample_id") or created.get("id")
    if not sample_id:
        raise MalformedAnswerError("physical sample created without an id", destination=NAME)
    return str(sample_id)


def _resolve_tags(tags: Sequence[str]) -> Generator[Request, HttpAnswer, list[str]]:
    names = normalise_tags(tags)
    if not names:
        return []
    listing = json_of((yield Request("GET", "/tags/")), "list tags")
    known = listing if isinstance(listing, list) else []
    by_id = {str(t.get("id", "")).lower(): str(t.get("id")) for t in known}
    by_name = {str(t.get("name", "")).strip().casefold(): str(t.get("id")) for t in known}
    ids: list[str] = []
    for name in names:
        if _is_uuid(name):
            if name.lower() not in by_id:
                raise RejectedError(f"tag {name} does not exist", destination=NAME, status=404)
            ids.append(by_id[name.lower()])
        elif name.casefold() in by_name:
            ids.append(by_name[name.casefold()])
        else:
            answer = yield Request("POST", "/tags/", body={"name": name})
            created = json_of(answer, "create tag")
            if not isinstance(created, dict) or "id" not in created:
                raise MalformedAnswerError(
                    f"tag {name!r} created without an id",
                    destination=NAME,
                    detail=answer.text[:200],
                )
            ids.append(str(created["id"]))
    return ids
