"""The uvicorn server this service runs on, with its socket settings."""

import asyncio
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# A stream client that stops reading must be noticed while it is a few hundred KB behind, not
# after the kernel has buffered megabytes for it (autotuning grows a send buffer up to 4 MB).
SEND_BUFFER_BYTES = 256 * 1024


class BoundedSendBufferProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        super().connection_made(transport)


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
