"""`sim/*` methods that look at the simulator without changing it, for harnesses and tests.

`sim/subscriptions` lists each other open connection's subscribed channels: a check that the
gateway's upstream channel set is exactly what it should be asks the exchange, not the gateway.
"""

from typing import Any

from cryptomarket.deribit.simulator.state import Call, Handler


def subscriptions(call: Call) -> list[dict[str, Any]]:
    return [
        {"connection": session.id, "channels": sorted(session.subscriptions)}
        for session in call.others
        if not session.closing
    ]


INSPECT_METHODS: dict[str, Handler] = {"sim/subscriptions": subscriptions}
