"""nginx/ as deployed: it passes `nginx -t`, and says what the SSE stream and the API need.

`nginx -t` runs on the files exactly as they are, laid out as the nginx image lays them out,
with `api` resolving as Docker's DNS would resolve it (see nginx_run.py). The structural checks
read the same files through a parser: what nginx does with them is shown live in
test_nginx_proxy.py; these say the configuration asks for it on purpose.
"""

from pathlib import Path

import yaml

from __tests__.deploy.files import (
    COMPOSE_FILE,
    NGINX_DIR,
    Directive,
    nginx_bytes,
    nginx_seconds,
    parse_nginx,
    walk,
)
from __tests__.deploy.nginx_run import (
    check_as_deployed,
    enable_https_redirect,
    for_loopback,
    lay_out,
    project_files,
)

SSE_PATH = "/api/v2/sse/connection"
PING_INTERVAL = 15  # seconds: the API's `: ping` on an idle stream (SPEC section 5)
DOCKER_DNS = {"api": "127.0.0.1"}


def _server_level() -> list[Directive]:
    """What every server block includes: cryptomarket.locations."""
    return parse_nginx((NGINX_DIR / "cryptomarket.locations").read_text())


def _locations() -> dict[str, Directive]:
    return {" ".join(d.args): d for d in _server_level() if d.name == "location"}


def _value(directives: list[Directive], name: str) -> list[str]:
    found = [d for d in directives if d.name == name]
    assert len(found) == 1, f"expected one {name}, got {len(found)}"
    return found[0].args


# nginx -t


def test_the_config_as_mounted_in_the_image_passes_nginx_t(nginx: Path, tmp_path: Path) -> None:
    lay_out(tmp_path, project_files())
    result = check_as_deployed(tmp_path, DOCKER_DNS)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_the_config_with_tls_and_the_https_redirect_turned_on_passes_nginx_t(
    nginx: Path, tmp_path: Path, certs: Path
) -> None:
    """The optional parts, turned on the way their comments say, are valid too."""
    lay_out(tmp_path, enable_https_redirect(project_files(tls=True)), certs)
    result = check_as_deployed(tmp_path, DOCKER_DNS)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_the_config_fails_nginx_t_where_api_does_not_resolve(nginx: Path, tmp_path: Path) -> None:
    """The namespace's hosts entry is what makes `api` resolve: the check is not vacuous."""
    lay_out(tmp_path, project_files())
    result = check_as_deployed(tmp_path, {"not-api": "127.0.0.1"})
    assert result.returncode != 0
    assert 'host not found in upstream "api:8003"' in result.stderr


def test_the_live_config_differs_only_in_its_addresses() -> None:
    """The config the live tests run is the project's, with two (three with TLS) lines changed."""
    original = project_files(tls=True)
    live = for_loopback(original, upstream="127.0.0.1:1", http_port=2, https_port=3)
    changed = {
        (name, before.strip(), after.strip())
        for name in original
        for before, after in zip(original[name].splitlines(), live[name].splitlines(), strict=True)
        if before != after
    }
    assert changed == {
        ("default.conf", "server api:8003;", "server 127.0.0.1:1;"),
        ("default.conf", "listen 80 default_server;", "listen 127.0.0.1:2 default_server;"),
        (
            "tls.conf",
            "listen 443 ssl http2 default_server;",
            "listen 127.0.0.1:3 ssl http2 default_server;",
        ),
    }


# What the configuration asks for


def test_the_sse_location_is_unbuffered_uncompressed_and_outlives_the_pings() -> None:
    sse = _locations()[f"= {SSE_PATH}"].block or []
    assert _value(sse, "proxy_pass") == ["http://api"]
    assert _value(sse, "proxy_buffering") == ["off"]
    assert _value(sse, "proxy_cache") == ["off"]
    assert _value(sse, "gzip") == ["off"]
    # Unbuffered by this config alone, whatever the upstream's X-Accel-Buffering says.
    assert "X-Accel-Buffering" in _value(sse, "proxy_ignore_headers")
    assert nginx_seconds(_value(sse, "proxy_read_timeout")[0]) > PING_INTERVAL
    assert nginx_seconds(_value(sse, "proxy_send_timeout")[0]) > PING_INTERVAL


def test_the_replicas_get_http_1_1_keepalive_and_the_forwarded_headers() -> None:
    server = _server_level()
    assert _value(server, "proxy_http_version") == ["1.1"]
    headers = {d.args[0].lower(): d.args[1] for d in server if d.name == "proxy_set_header"}
    assert headers["connection"] == ""  # never `Connection: close`: connections are reused
    assert headers["x-forwarded-for"] == "$remote_addr"  # set by the edge, not by the client
    assert headers["x-forwarded-proto"] == "$scheme"
    assert headers["x-forwarded-host"] == "$host"
    upstream = next(
        d for d in parse_nginx((NGINX_DIR / "default.conf").read_text()) if d.name == "upstream"
    )
    assert upstream.args == ["api"]
    assert upstream.child("keepalive").args


def test_no_location_drops_the_proxy_headers() -> None:
    """A proxy_set_header inside a location would replace, not add to, the server's set."""
    for location in _locations().values():
        inner = [d.name for d in walk(location.block or [])]
        assert "proxy_set_header" not in inner, location.args


def test_request_sizes_are_limited() -> None:
    server = _server_level()
    assert nginx_bytes(_value(server, "client_max_body_size")[0]) <= 1024 * 1024
    assert _value(server, "client_header_buffer_size")
    count, size = _value(server, "large_client_header_buffers")
    assert int(count) * nginx_bytes(size) <= 128 * 1024
    assert nginx_seconds(_value(server, "client_body_timeout")[0]) <= 60


def test_every_server_block_serves_the_same_locations_and_logs_redacted() -> None:
    files = project_files(tls=True)
    servers = [d for name in ("default.conf", "tls.conf") for d in parse_nginx(files[name])]
    servers = [d for d in servers if d.name == "server"]
    assert len(servers) == 2
    for server in servers:
        assert server.child("include").args == ["conf.d/cryptomarket.locations"]
    access_logs = [d.args for d in _server_level() if d.name == "access_log"]
    assert access_logs == [["/dev/stdout", "cryptomarket"]]
    log_format = next(d for d in parse_nginx(files["default.conf"]) if d.name == "log_format")
    logged = "".join(log_format.args[1:])
    assert "$request " not in logged and "$request_uri" not in logged and "$args" not in logged
    assert "$cm_logged_query" in logged


def test_the_upstream_is_where_compose_runs_the_api() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    api_command = compose["services"]["api"]["command"]
    port = api_command[api_command.index("--port") + 1]
    upstream = next(
        d for d in parse_nginx((NGINX_DIR / "default.conf").read_text()) if d.name == "upstream"
    )
    assert upstream.child("server").args[0] == f"api:{port}"
    volumes = compose["services"]["nginx"]["volumes"]
    assert "./nginx:/etc/nginx/conf.d:ro" in volumes


def test_public_history_is_rate_and_connection_limited_per_address_and_the_stream_is_not() -> None:
    """Issue #15, defect 2: price history is a CPU and memory lever; nginx bounds it per client
    address. The SSE stream must never be limited there (a reconnecting dashboard would be
    refused its live prices)."""
    zones = {
        d.name: d.args
        for d in parse_nginx((NGINX_DIR / "default.conf").read_text())
        if d.name in {"limit_req_zone", "limit_conn_zone"}
    }
    assert zones["limit_req_zone"][:2] == ["$binary_remote_addr", "zone=cm_history_rate:10m"]
    assert zones["limit_conn_zone"] == ["$binary_remote_addr", "zone=cm_history_conns:10m"]
    history = _locations()["/api/v1/prices"].block or []
    assert _value(history, "proxy_pass") == ["http://api"]
    assert _value(history, "limit_req")[0] == "zone=cm_history_rate"
    assert _value(history, "limit_conn") == ["cm_history_conns", "3"]
    server = _server_level()
    assert _value(server, "limit_req_status") == ["429"]
    assert _value(server, "limit_conn_status") == ["429"]
    # Only the history location limits: nothing at server level that every location inherits.
    assert not [d for d in server if d.name in {"limit_req", "limit_conn"}]
    for args, location in _locations().items():
        if args != "/api/v1/prices":
            inner = {d.name for d in walk(location.block or [])}
            assert not inner & {"limit_req", "limit_conn"}, args
