"""nginx in front of the servers a benchmark measures, as the deployment puts it there.

The project's own configuration (nginx/, laid out as the nginx image lays it out, by the deploy
tests' __tests__/deploy/nginx_run.py) with only what loopback needs changed: the upstream servers
and the listen port. The wrapper's worker settings are the image's defaults sized up for
thousands of streams (each proxied stream holds two connections of a worker): `worker_processes
auto`, 30,000 connections a worker.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from __tests__.deploy.nginx_run import NGINX, for_loopback, lay_out, project_files
from bench.sse_common import HOST, Child, clean_env, free_port, start, stop, wait_port

WORKER_CONNECTIONS = 30_000
_runs = itertools.count()


@dataclass
class Front:
    child: Child
    port: int

    def stop(self) -> None:
        stop(self.child)


def start_front(base: Path, logs: Path, upstream_ports: list[int]) -> Front:
    """A running nginx proxying to 127.0.0.1 at each of `upstream_ports` (round-robin)."""
    prefix = base / f"nginx-{next(_runs)}"
    port = free_port()
    upstream = "; server ".join(f"{HOST}:{each}" for each in upstream_ports)
    config = lay_out(prefix, for_loopback(project_files(), upstream=upstream, http_port=port))
    text = config.read_text()
    for old, new in (
        ("worker_processes 1;", "worker_processes auto;\nworker_rlimit_nofile 65536;"),
        ("worker_connections 256;", f"worker_connections {WORKER_CONNECTIONS};"),
    ):
        if old not in text:
            raise RuntimeError(f"the deploy tests' nginx wrapper has no {old!r} any more")
        text = text.replace(old, new)
    config.write_text(text)
    argv = [str(NGINX), "-p", f"{prefix}/", "-c", str(config), "-e", str(prefix / "error.log")]
    child = start(prefix.name, [*argv, "-g", "daemon off;"], env=clean_env(), cwd=prefix, logs=logs)
    wait_port(HOST, port, 15, child)
    return Front(child, port)
