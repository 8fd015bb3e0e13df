"""One attacker beside well-behaved users (issue #15, "Show it"), at a small size.

The benchmark `bench/bench_hostile.py` itself, run small: a real simulator and a real `cryptomarket
serve` process, well-behaved `timer=0` streams (a key and an address per user) beside an attacker
on its own address who floods history, claims user ids with one key, reopens streams with huge
Last-Event-ID replays and hammers sign-in with a victim's Client Id. Latency is the benchmark's
to measure; this asserts what users rely on: every tick reaches every steady stream, each attack
meets 429s, and no good client (the victim included) gets a 503 or is locked out.
"""

import pytest

from bench import bench_hostile

pytestmark = pytest.mark.timeout(300)


async def test_an_attacker_gets_429s_and_everyone_else_keeps_their_prices(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    args = bench_hostile.parse_args(
        ["--streams", "40", "--seconds", "6", "--warmup", "2", "--output", "/dev/null"]
    )
    quiet, attack = await bench_hostile.run(args, tmp_path_factory.mktemp("hostile"))

    for window in (quiet, attack):
        assert window.expected > 0
        assert window.delivered == window.expected, window.name
    seen = attack.seen
    refused = {what.split(" ")[0] for what, n in seen.items() if what.endswith(" 429") and n}
    assert refused >= {"(a)", "(b)", "(c)", "(d)"}, dict(seen)  # every attack met its limit
    good = {what: n for what, n in seen.items() if not what.startswith("(")}
    assert good["victim sign-in 201"] > 0
    assert set(good) <= {"stream 200", "history 200", "victim sign-in 201"}, good
    assert not any(what.endswith(" 503") for what in seen), dict(seen)


def test_the_report_says_what_was_met() -> None:
    quiet = bench_hostile.Window("quiet", delivered=10, expected=10, latencies=[1.0, 2.0])
    attack = bench_hostile.Window("attacked", delivered=10, expected=10, latencies=[1.0, 9.0])
    attack.seen["(a) history 429"] = 3
    attack.seen["stream 503"] = 1
    checks = dict(bench_hostile.verdicts(quiet, attack))
    assert list(checks.values()) == [True, False, True, False]
