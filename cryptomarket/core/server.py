"""The uvicorn server this service runs on, with its socket settings."""

import asyncio
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# A stream client that stops reading must be noticed while it is a few hundred KB behind, not
# after the kernel has buffered megabytes for it (autotuning grows a send buffer up to 4 MB).
SEND_BUFFER_BYTES = 256 * 1024
# The request line and headers of one request, at most (nginx's default allows 4 x 8 KB): the
# parser uvicorn uses here has no bound of its own, so a header flood would be held in memory.
MAX_REQUEST_HEAD_BYTES = 64 * 1024


class RequestHeadTooLarge(Exception):
    """Raised inside the parser's callback: uvicorn answers 400 and closes the connection."""


class BoundedSendBufferProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        super().connection_made(transport)

    def on_message_begin(self) -> None:
        self.head_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        self.head_bytes = getattr(self, "head_bytes", 0) + size
        if self.head_bytes > MAX_REQUEST_HEAD_BYTES:
            raise RequestHeadTooLarge(
                f"request line and headers over {MAX_REQUEST_HEAD_BYTES} bytes"
            )


def make_server(app: Any, host: str, port: int, **options: Any) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=BoundedSendBufferProtocol,
        log_config=None,  # ours: stdout, secrets masked
        server_header=False,
        timeout_graceful_shutdown=10,
        **options,
    )
    return uvicorn.Server(config)
