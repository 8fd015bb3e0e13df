"""CSV downloads: whether a request asks for one, and a streamed `text/csv` response.

Rows come from an async iterator (a server-side cursor, pages of a query) and go out in chunks of
a few thousand, so the memory an export takes does not grow with its length. When the client
goes away, the iterator is closed at once (`ClosingStreamingResponse`), ending the query behind
it.
"""

import csv
import io
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

MEDIA_TYPE = "text/csv; charset=utf-8"
CHUNK_ROWS = 5_000


def wants_csv(request: Request, format: str | None) -> bool:
    """`format=csv`, or an Accept header that names text/csv (and not JSON before it)."""
    if format is not None:
        return format == "csv"
    accept = request.headers.get("accept", "")
    for media_range in accept.split(","):
        kind = media_range.split(";")[0].strip().lower()
        if kind == "text/csv":
            return True
        if kind in ("application/json", "application/*"):
            return False
    return False


def csv_response(
    header: Sequence[str], chunks: AsyncIterable[Iterable[Sequence[Any]]], filename: str
) -> StreamingResponse:
    """A download of `header` then every row of `chunks` (each an iterable of rows)."""
    return csv_download(encoded(header, chunks), filename)


class ClosingStreamingResponse(StreamingResponse):
    """A streamed response that closes its body however it ends. When the client leaves,
    Starlette stops reading the body but leaves it suspended at its `yield`, holding what it
    holds (a database connection, a query) until garbage collection gets to it."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                with anyio.CancelScope(shield=True):
                    await close()


def csv_download(body: AsyncIterable[bytes], filename: str) -> StreamingResponse:
    """A download of CSV text already encoded (by the database, say)."""
    return ClosingStreamingResponse(
        body,
        media_type=MEDIA_TYPE,
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
        },
    )


async def encoded(
    header: Sequence[str], chunks: AsyncIterable[Iterable[Sequence[Any]]]
) -> AsyncIterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    async for rows in chunks:
        writer.writerows(rows)
        if buffer.tell() >= 256 * 1024:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()
