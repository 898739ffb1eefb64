"""The gate that orders the synth stage's calls when more are ready than the endpoint takes."""

from __future__ import annotations

import asyncio

from tasks.synth import PriorityGate


async def hold(gate: PriorityGate, name: str, priority: int, log: list[str], active: list[int]):
    async with gate.slot(priority):
        active.append(1)
        log.append(name)
        assert len(active) <= 2
        await asyncio.sleep(0.01)
        active.pop()


def test_gate_bounds_holders_and_admits_lowest_priority_first() -> None:
    async def scenario() -> list[str]:
        gate, log, active = PriorityGate(2), [], []
        first = [asyncio.create_task(hold(gate, f"first{i}", 5, log, active)) for i in range(2)]
        await asyncio.sleep(0)  # both take the two free slots
        later = [
            asyncio.create_task(hold(gate, name, prio, log, active))
            for name, prio in [("qa1", 2), ("triple", 1), ("qa2", 2), ("points", 0)]
        ]
        await asyncio.gather(*first, *later)
        return log

    log = asyncio.run(scenario())
    assert log[:2] == ["first0", "first1"]
    assert log[2:] == ["points", "triple", "qa1", "qa2"]


def test_cancelled_waiter_gives_up_its_place_and_no_slot_leaks() -> None:
    async def scenario() -> list[str]:
        gate, log, active = PriorityGate(1), [], []
        holder = asyncio.create_task(hold(gate, "holder", 0, log, active))
        await asyncio.sleep(0)
        doomed = asyncio.create_task(hold(gate, "doomed", 0, log, active))
        after = asyncio.create_task(hold(gate, "after", 1, log, active))
        await asyncio.sleep(0)
        doomed.cancel()
        await asyncio.gather(holder, after)
        # The slot came back: a new holder gets in at once.
        await asyncio.wait_for(hold(gate, "last", 0, log, active), timeout=1)
        return log

    assert asyncio.run(scenario()) == ["holder", "after", "last"]
