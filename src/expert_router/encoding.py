"""Request bodies' `Content-Encoding`, decoded, and never to more than the body limit.

gzip and deflate come from the standard library's zlib, br from `brotli` and zstd from `zstandard`
(the packages aiohttp and urllib3 decode them with). Every failure is the client's: 415 for an encoding not
offered here, 400 for bytes that do not decode, 413 for a body that decodes past the limit (a small
compressed body can expand a thousandfold, so decoding stops at the limit instead of after it).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import brotli
import zstandard

from expert_router.errors import BadRequest

Decoder = Callable[[bytes, int], bytes]
"""(body, limit) -> at most limit + 1 decoded bytes (one past the limit says it was exceeded)."""

MAX_MEMBERS = 64
"""gzip members or zstd frames one body may hold. A decoder tells where its member ended only by
copying what follows it (`unused_data`), so a body of many members cost its length times their number:
200,000 empty gzip members (4 MB) held the gateway's event loop 6.7 s. Here each member is fed in
pieces of `PIECE` bytes, and their number is capped."""
PIECE = 64 * 1024


def _zlib(wbits: int, members: bool = False) -> Decoder:
    """`members`: the body may hold several compressed members one after another (gzip's; each is
    decoded, as gzip(1) and the standard library's `gzip.decompress` do)."""

    def decode(body: bytes, limit: int) -> bytes:
        view, at, parts, size = memoryview(body), 0, [], 0
        for _ in range(MAX_MEMBERS):
            decoder = zlib.decompressobj(wbits)
            while not decoder.eof:
                if at >= len(view):
                    raise zlib.error("the stream is truncated")
                piece = view[at : at + PIECE]
                parts.append(decoder.decompress(piece, limit + 1 - size))
                size += len(parts[-1])
                if size > limit:
                    return b"".join(parts)
                at += len(piece) - len(decoder.unused_data)
            if not members or at >= len(view):
                return b"".join(parts)
        raise zlib.error(f"more than {MAX_MEMBERS} members")

    return decode


def _deflate(body: bytes, limit: int) -> bytes:
    """`deflate` is zlib-wrapped by the standard, raw by some clients: both are taken (as aiohttp does)."""
    try:
        return _zlib(zlib.MAX_WBITS)(body, limit)
    except zlib.error:
        return _zlib(-zlib.MAX_WBITS)(body, limit)


def _brotli(body: bytes, limit: int) -> bytes:
    decoder = brotli.Decompressor()
    out = decoder.process(body, output_buffer_limit=limit + 1)  # the buffer stops growing at the limit
    if len(out) <= limit and not decoder.is_finished():
        raise brotli.error("the stream is truncated")
    return out


def _zstd(body: bytes, limit: int) -> bytes:
    reader = zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True)  # every frame, not the first
    out: bytes = reader.read(limit + 1)
    if len(out) <= limit:
        _check_whole_frames(body)
    return out


def _check_whole_frames(body: bytes) -> None:
    """Raise where `body`'s last frame is cut short: the reader gives a cut frame's whole blocks, or
    nothing, without a word. Decoding again is safe here: the reader has shown that the whole body
    decodes to no more than the limit. Fed in pieces, at most `MAX_MEMBERS` frames, as `_zlib`."""
    decompressor = zstandard.ZstdDecompressor()
    view, at = memoryview(body), 0
    for _ in range(MAX_MEMBERS):
        frame = decompressor.decompressobj()
        while not frame.eof:
            if at >= len(view):
                raise zstandard.ZstdError("the stream is truncated")
            piece = view[at : at + PIECE]
            frame.decompress(piece)
            at += len(piece) - len(frame.unused_data)
        if at >= len(view):
            return
    raise zstandard.ZstdError(f"more than {MAX_MEMBERS} frames")


DECODERS: dict[str, Decoder] = {
    "gzip": _zlib(16 + zlib.MAX_WBITS, members=True),
    "x-gzip": _zlib(16 + zlib.MAX_WBITS, members=True),
    "deflate": _deflate,
    "br": _brotli,
    "zstd": _zstd,
}
CONTENT_ENCODINGS = frozenset({"identity", *DECODERS})
"""What a client may send; the 415's message lists them."""
MAX_CODINGS = 5
"""Codings one body may stack (urllib3's limit too): each pass over a body is CPU on the event loop,
and a 64 KiB header could list thousands."""


def decode_body(body: bytes, header: bytes, limit: int) -> bytes:
    """`body` decoded from the codings its `Content-Encoding` header lists (applied in order, so undone
    last first). Raises BadRequest: 415, 400 or 413."""
    codings = [c.strip().lower() for c in header.decode("latin-1").split(",") if c.strip()]
    if len(codings) > MAX_CODINGS:
        raise BadRequest(f"Content-Encoding lists {len(codings)} codings; at most {MAX_CODINGS} are decoded")
    for coding in codings:
        if coding not in CONTENT_ENCODINGS:
            raise BadRequest(
                f"Content-Encoding {coding!r} is not supported; use one of {sorted(CONTENT_ENCODINGS)}", status=415
            )
    for coding in reversed(codings):
        if coding == "identity":
            continue
        try:
            body = DECODERS[coding](body, limit)
        except Exception:  # each library raises its own error type for bytes it cannot decode
            raise BadRequest(f"the request body cannot be decoded as Content-Encoding {coding!r}") from None
        if len(body) > limit:
            raise BadRequest(f"the request body is larger than {limit} bytes once decoded", status=413)
    return body
