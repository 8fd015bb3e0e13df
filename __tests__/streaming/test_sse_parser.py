"""The test suite's SSE reader follows the standard, so the stream tests can trust it."""

import pytest

from __tests__.sse import SSEParser


def test_parser_follows_the_standard() -> None:
    parser = SSEParser()
    parser.feed("\ufeff: hello\r\nretry: 2500\r\n\r\nevent: price\nid: a:1\r")
    assert parser.events == []
    done = parser.feed('\ndata: {"x": 1}\r\rdata: {"y":2}\nevent: gap\n\n')
    assert [(e.event, e.data, e.id) for e in done] == [
        ("price", {"x": 1}, "a:1"),
        ("gap", {"y": 2}, None),
    ]
    assert parser.retry_ms == 2500
    assert parser.comments == ["hello"]
    assert parser.last_event_id == "a:1"


@pytest.mark.parametrize(
    "bad",
    ["data: {}\ndata: {}\n\n", "data: {}\n\n", "event: x\nretry: 1s\n\n", "event: x\nfoo: 1\n\n"],
)
def test_parser_rejects_what_this_service_never_sends(bad: str) -> None:
    with pytest.raises(AssertionError):
        SSEParser().feed(bad)
