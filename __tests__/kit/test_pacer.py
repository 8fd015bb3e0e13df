"""Pacer: callers woken together go on a few dozen per round of the event loop, in arrival order,
so the loop serves timers and sockets between them."""

import asyncio

from cryptomarket.kit.batched import Batched
from cryptomarket.kit.pacer import PER_ROUND, Pacer

CALLERS = 1_000


class Rounds:
    """Counts the callers that went on in each round of the loop: a callback that schedules
    itself again runs once a round."""

    def __init__(self) -> None:
        self.per_round: list[int] = [0]
        self._running = True
        asyncio.get_running_loop().call_soon(self._mark)

    def went_on(self) -> None:
        self.per_round[-1] += 1

    def _mark(self) -> None:
        self.per_round.append(0)
        if self._running:
            asyncio.get_running_loop().call_soon(self._mark)

    def stop(self) -> None:
        self._running = False


async def test_callers_woken_together_go_on_a_bounded_number_a_round_in_order() -> None:
    pacer, rounds, order = Pacer(), Rounds(), []
    woken = asyncio.Event()

    async def caller(index: int) -> None:
        await woken.wait()
        await pacer.turn()
        rounds.went_on()
        order.append(index)

    callers = [asyncio.create_task(caller(i)) for i in range(CALLERS)]
    await asyncio.sleep(0)
    woken.set()
    await asyncio.gather(*callers)
    rounds.stop()

    assert order == list(range(CALLERS))
    assert max(rounds.per_round) <= PER_ROUND
    assert sum(rounds.per_round) == CALLERS


async def test_a_caller_that_gives_up_while_waiting_leaves_the_others_their_turns() -> None:
    pacer = Pacer(per_round=1)
    callers = [asyncio.create_task(pacer.turn()) for _ in range(4)]
    await asyncio.sleep(0)  # all four asked: one went on, three wait their rounds
    callers[2].cancel()

    results = await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), 1)

    assert callers[2].cancelled()
    assert [result for i, result in enumerate(results) if i != 2] == [None, None, None]


async def test_one_answer_for_a_thousand_callers_wakes_them_a_few_dozen_a_round() -> None:
    released = asyncio.Event()

    async def load(keys: list[str]) -> dict[str, int]:
        await released.wait()
        return dict.fromkeys(keys, 7)

    batched: Batched[str, int] = Batched(load)
    rounds = Rounds()

    async def caller() -> int | None:
        value = await batched.get("session")  # every stream of one user asks for the same one
        rounds.went_on()
        return value

    callers = [asyncio.create_task(caller()) for _ in range(CALLERS)]
    await asyncio.sleep(0)
    released.set()
    values = await asyncio.gather(*callers)
    rounds.stop()

    assert values == [7] * CALLERS
    assert batched.queries == 1
    assert max(rounds.per_round) <= PER_ROUND


def test_a_pacer_outliving_its_loop_serves_the_next_one() -> None:
    pacer = Pacer(per_round=2)
    first = asyncio.new_event_loop()

    async def take_a_turn_and_stop() -> None:
        await pacer.turn()
        asyncio.get_running_loop().stop()  # before the round that gives the turns back

    task = first.create_task(take_a_turn_and_stop())
    first.run_forever()
    first.close()
    assert task.done()

    async def crowd() -> None:
        await asyncio.wait_for(asyncio.gather(*(pacer.turn() for _ in range(5))), 1)

    asyncio.run(crowd())
