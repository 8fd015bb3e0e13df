"""The stream hub on its own: what closed streams and changed timers leave behind."""

import gc

from cryptomarket.streaming.hub import Stream, StreamHub


async def test_closed_streams_and_changed_timers_do_not_pile_up() -> None:
    hub = StreamHub(max_streams=100, max_per_user=100)
    for _ in range(5_000):  # a day-long timer: its entry would wait 24 h to come due
        stream = hub.open("alice", None)
        for ticker in ("btc_usd", "eth_usd", "sol_usdc"):
            hub.subscribe(stream, ticker, 86_400)
        hub.close(stream)
    kept = hub.open("alice", None)
    for timer in range(1, 5_001):  # create_order?timer= again and again on an open stream
        hub.subscribe(kept, "btc_usd", timer)
    assert len(hub._due) < 200
    gc.collect()
    assert sum(isinstance(obj, Stream) for obj in gc.get_objects()) < 200
    hub.close(kept)
