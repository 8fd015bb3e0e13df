"""Schemathesis against `/openapi.json` of a running server: every route, signed in as alice.

Each operation gets valid (positive) and invalid (negative) requests generated from the schema.
Half of the cases name `alice` as the path's `user_id`, so the owner check lets them through to
the route's own logic; the others meet the 403 or 422 of the check. Every answer must be no 5xx,
a status the schema documents, the declared content type, and a body that matches the schema;
invalid input must be refused with a 4xx.

The SSE route's body never ends: its cases are sent with a streaming client that reads the
status and headers (and the body of a refusal) and then hangs up, and are checked the same way
except for the 200 body. Schemathesis is synchronous (requests), so it runs in a thread while
the server runs in the test's event loop.
"""

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

from __tests__.service import Service

EXAMPLES = 50  # per operation and mode: well under a minute for the whole schema
STREAM_PATH = "/api/v2/sse/connection"
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


def fuzz(raw_schema: dict[str, Any], base_url: str, token: str) -> list[str]:
    schema = schemathesis.openapi.from_dict(raw_schema)
    auth = {"Authorization": f"Bearer {token}"}
    labels = []
    for result in schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if operation.path == STREAM_PATH:
                check = stream_check(raw_schema, base_url, auth, operation.method.upper())
            else:
                check = route_check(base_url, auth, mode)
            run_cases(operation, mode, check)
    return labels


def run_cases(operation: Any, mode: GenerationMode, check: Callable[[Any], None]) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), own=st.booleans())
    def run(case: Any, own: bool) -> None:
        if own and "user_id" in (case.path_parameters or {}):
            case.path_parameters["user_id"] = "alice"
        check(case)

    try:
        run()
    except Unsatisfiable:
        assert mode.is_negative  # nothing to make invalid: a route without parameters or body
    except Exception as failure:
        raise AssertionError(f"{operation.label} ({mode}): {failure}") from failure


def route_check(base_url: str, auth: dict[str, str], mode: GenerationMode) -> Callable[[Any], None]:
    chosen = [*CHECKS, checks.negative_data_rejection] if mode.is_negative else CHECKS

    def check(case: Any) -> None:
        case.call_and_validate(base_url=base_url, headers=auth, checks=chosen, timeout=10)

    return check


def stream_check(
    raw_schema: dict[str, Any], base_url: str, auth: dict[str, str], method: str
) -> Callable[[Any], None]:
    documented = raw_schema["paths"][STREAM_PATH][method.lower()]["responses"]

    def check(case: Any) -> None:
        request = case.as_transport_kwargs(base_url=base_url, headers=auth)
        with (
            httpx.Client(timeout=10) as client,
            client.stream(
                request["method"],
                request["url"],
                params=request.get("params"),
                headers={k: str(v) for k, v in (request.get("headers") or {}).items()},
                cookies=request.get("cookies"),
                content=request.get("data") or request.get("content"),
                json=request.get("json"),
            ) as response,
        ):
            status = response.status_code
            assert status < 500 or status == 503, f"{status} for {case.as_curl_command()}"
            assert str(status) in documented, f"undocumented {status}: {case.as_curl_command()}"
            content_type = response.headers["content-type"]
            if status == 200:
                assert content_type.startswith("text/event-stream")
                return  # a never-ending body: the stream itself is tested in test_stream.py
            assert content_type == "application/json", content_type
            body = json.loads(response.read())
            assert set(body) == {"detail", "code"}, body

    return check


async def test_every_route_keeps_to_its_schema(service: Service) -> None:
    token = await service.sign_in("alice")
    raw = (await service.client.get("/openapi.json")).json()
    labels = await asyncio.to_thread(fuzz, raw, service.base_url, token)
    paths = {path for path in raw["paths"]}
    assert {label.split(" ", 1)[1] for label in labels} == paths  # no route left out
    assert f"GET {STREAM_PATH}" in labels
