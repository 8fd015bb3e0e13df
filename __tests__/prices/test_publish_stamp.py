"""`received_at` is the publish order: strictly increasing in a process, whatever the clock does."""

import itertools
from datetime import timedelta

import pytest

from cryptomarket.prices import models


def test_stamps_grow_by_at_least_a_microsecond_when_the_clock_stalls_or_steps_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    far = 5_000_000_000_000_000_000  # ns: in 2128, after any stamp taken so far
    clock = iter([far, far, far - 10**18])
    # Put the process's last stamp back afterwards: later tests must not inherit 2128.
    monkeypatch.setattr(models, "_last_stamp_us", models._last_stamp_us)
    first = models.publish_stamp()
    monkeypatch.setattr(models.time, "time_ns", lambda: next(clock))
    stamps = [first, *(models.publish_stamp() for _ in range(3))]
    assert all(b - a >= timedelta(microseconds=1) for a, b in itertools.pairwise(stamps))
    assert stamps[1] == models.EPOCH + timedelta(microseconds=5_000_000_000_000_000)
    assert stamps[3] - stamps[2] == timedelta(microseconds=1)  # the clock went back: +1 µs
