"""The project's nginx configuration run by a real nginx, laid out as the nginx image lays it out.

The image's /etc/nginx/nginx.conf includes /etc/nginx/conf.d/*.conf inside `http { }`, and
docker-compose.yml mounts nginx/ at /etc/nginx/conf.d/. Here a temporary prefix directory plays
/etc/nginx/: `nginx.conf` (the wrapper below, shaped like the image's), `mime.types`, and
`conf.d/` holding the project's files. nginx resolves relative paths against the directory of
the main configuration file, so the project's `include conf.d/...` and certificate paths work
unchanged; logs, the pid file and temporary files stay inside the prefix.

Two ways to run it:
- `check_as_deployed`: `nginx -t` on the files exactly as they are, in a mount and network
  namespace where /etc/hosts maps `api` (the compose service name) to 127.0.0.1, as Docker's DNS
  would, and where ports 80 and 443 are free to bind (nginx -t binds the listen sockets).
- `running_nginx`: a live nginx on loopback. It cannot listen on 80 or reach `api:8003`, so
  `for_loopback` rewrites exactly those lines (the upstream server and the listen ports) and
  nothing else; a test checks that.
"""

# Every subprocess here runs nginx, unshare or sh with arguments built by this module.
# ruff: noqa: S603

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from __tests__.deploy.files import NGINX_DIR

NGINX = Path("/usr/sbin/nginx")
MIME_TYPES = Path("/etc/nginx/mime.types")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

MISSING_NGINX = (
    "nginx is not installed: /usr/sbin/nginx is missing. The deployment tests run the project's "
    "nginx configuration with a real nginx; install Debian's package: `apt-get install nginx` "
    "(`make servers` does it)."
)

# Shaped like the nginx image's nginx.conf; paths point into the prefix. `user root` keeps the
# worker processes able to write the prefix's temporary directories (nginx ignores it, with a
# warning, when it does not run as root).
WRAPPER = """\
user root;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log notice;

events {{
    worker_connections 256;
}}

http {{
    include mime.types;
    default_type application/octet-stream;

    # As in the image: a log of every request in the `main` format, which the project's servers
    # replace with their own (redacted) access log.
    log_format main '$remote_addr - $remote_user [$time_local] "$request" '
                    '$status $body_bytes_sent "$http_referer" "$http_user_agent"';
    access_log {prefix}/main-access.log main;

    client_body_temp_path {prefix}/temp/client_body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;

    sendfile on;
    keepalive_timeout 65;

    include conf.d/*.conf;
}}
"""


def project_files(*, tls: bool = False) -> dict[str, str]:
    """The files of nginx/, by name; with `tls`, TLS turned on as tls.conf.example says."""
    files = {path.name: path.read_text() for path in NGINX_DIR.iterdir() if path.is_file()}
    if tls:
        files["tls.conf"] = files["tls.conf.example"]
    return files


def enable_https_redirect(files: Mapping[str, str]) -> dict[str, str]:
    """default.conf with its redirect line uncommented, as its comment tells an operator to."""
    default, count = re.subn(
        r'^(\s*)# ("~\^http:.*" 1;)$', r"\1\2", files["default.conf"], flags=re.MULTILINE
    )
    assert count == 1, "default.conf has no commented redirect line to turn on"
    return {**files, "default.conf": default}


def for_loopback(
    files: Mapping[str, str], *, upstream: str, http_port: int, https_port: int | None = None
) -> dict[str, str]:
    """The files with only the addresses changed: `api:8003` and the listen ports."""
    default = files["default.conf"]
    default = _replace_once(default, r"server api:8003;", f"server {upstream};")
    default = _replace_once(
        default, r"listen 80 default_server;", f"listen 127.0.0.1:{http_port} default_server;"
    )
    changed = {**files, "default.conf": default}
    if "tls.conf" in files:
        assert https_port is not None, "TLS is on: an HTTPS port is needed"
        changed["tls.conf"] = _replace_once(
            files["tls.conf"],
            r"listen 443 ssl http2 default_server;",
            f"listen 127.0.0.1:{https_port} ssl http2 default_server;",
        )
    return changed


def _replace_once(text: str, line: str, replacement: str) -> str:
    pattern = re.compile(rf"^(\s*){re.escape(line)}$", re.MULTILINE)
    result, count = pattern.subn(lambda m: m.group(1) + replacement, text)
    assert count == 1, f"expected exactly one line {line!r} in the project's nginx config"
    return result


def lay_out(prefix: Path, files: Mapping[str, str], certs: Path | None = None) -> Path:
    """Write the prefix directory; returns the path of its nginx.conf."""
    conf_d = prefix / "conf.d"
    conf_d.mkdir(parents=True)
    (prefix / "temp").mkdir()
    for name, text in files.items():
        (conf_d / name).write_text(text)
    if certs is not None:
        shutil.copytree(certs, conf_d / "certs")
    shutil.copy(MIME_TYPES, prefix / "mime.types")
    config = prefix / "nginx.conf"
    config.write_text(WRAPPER.format(prefix=prefix))
    return config


def _nginx_args(prefix: Path) -> list[str]:
    return ["-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")]


def check(prefix: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on the prefix's configuration, here."""
    return subprocess.run(
        [str(NGINX), "-t", *_nginx_args(prefix)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def check_as_deployed(prefix: Path, hosts: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """`nginx -t` where /etc/hosts holds `hosts` (name -> address) and every port is free.

    A private mount namespace gets a bind-mounted hosts file (the machine's is untouched) and a
    private network namespace gets free ports; without root, a user namespace provides both.
    """
    hosts_file = prefix / "hosts"
    hosts_file.write_text(
        "127.0.0.1 localhost\n" + "".join(f"{ip} {name}\n" for name, ip in hosts.items())
    )
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    as_user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    script = 'mount --bind "$1" /etc/hosts && shift && exec "$@"'
    command = [unshare, *as_user, "--mount", "--net", "--fork", "sh", "-c", script, "sh"]
    result = subprocess.run(
        [*command, str(hosts_file), str(NGINX), "-t", *_nginx_args(prefix)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if "nginx:" not in result.stderr:  # nginx never ran: the namespace could not be made
        raise AssertionError(
            "cannot run nginx in a private mount and network namespace (unshare, "
            f"{'root' if not as_user else 'user namespaces'} needed): {result.stderr.strip()}"
        )
    return result


@dataclass
class RunningNginx:
    prefix: Path
    process: subprocess.Popen[bytes]
    http_url: str
    https_url: str | None

    @property
    def stdout_path(self) -> Path:
        """The project's access log (it logs to /dev/stdout, as in the container)."""
        return self.prefix / "stdout.log"

    def logs(self) -> dict[str, str]:
        """Every log nginx wrote, by file name: access logs, error logs, stdout, stderr."""
        return {
            path.name: path.read_text(errors="replace")
            for path in self.prefix.iterdir()
            if path.suffix == ".log"
        }

    def wait_for_log(self, needle: str, timeout: float = 5.0) -> str:
        """The access log once it holds `needle` (nginx logs a request when it ends)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.stdout_path.read_text(errors="replace")
            if needle in text or time.monotonic() > deadline:
                return text
            time.sleep(0.05)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def running_nginx(
    prefix: Path, http_port: int, https_port: int | None = None
) -> Iterator[RunningNginx]:
    """Run nginx in the foreground on the laid-out prefix until the block ends.

    `nginx -t` must pass first. nginx is stopped at the end whatever happens: SIGTERM (its fast
    shutdown, which ends its workers first), or SIGKILL to its process group if that hangs.
    """
    tested = check(prefix)
    assert tested.returncode == 0, f"nginx -t failed:\n{tested.stderr}"
    with (
        (prefix / "stdout.log").open("wb") as stdout,
        (prefix / "stderr.log").open("wb") as stderr,
    ):
        process = subprocess.Popen(
            [str(NGINX), *_nginx_args(prefix), "-g", "daemon off;"],
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: workers included in the kill
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        ports = [http_port] + ([https_port] if https_port else [])
        while not all(_accepts(port) for port in ports):
            if process.poll() is not None or time.monotonic() > deadline:
                error_log = (prefix / "error.log").read_text(errors="replace")
                raise AssertionError(f"nginx did not start:\n{error_log[-3000:]}")
            time.sleep(0.02)
        yield RunningNginx(
            prefix,
            process,
            f"http://127.0.0.1:{http_port}",
            f"https://127.0.0.1:{https_port}" if https_port else None,
        )
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
        return
    except subprocess.TimeoutExpired:
        pass
    # The master is still there (not reaped), so its process group is still the one we started.
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(STOP_TIMEOUT)
