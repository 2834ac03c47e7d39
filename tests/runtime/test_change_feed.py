"""The task board's change feed without Ray: generations, long polls, coalescing, waiting until applied."""

from __future__ import annotations

import asyncio
import time

from mosaserve.runtime.change_feed import ChangeFeed


def run(coroutine):
    return asyncio.run(coroutine)


def test_an_announcement_answers_a_waiting_heartbeat_at_once():
    async def scenario():
        feed = ChangeFeed(coalesce_s=0.0, forget_after_s=60.0, first_generation=10)
        assert await feed.heartbeat("r1", None) == 10  # a new replica is told where to go, without waiting
        waiting = asyncio.create_task(feed.heartbeat("r1", 10, wait_s=30.0))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # up to date: it waits for news
        began = time.monotonic()
        assert feed.announce() == 11
        assert await waiting == 11 and time.monotonic() - began < 5.0
    run(scenario())


def test_an_up_to_date_replica_is_answered_after_its_wait_when_nothing_changes():
    async def scenario():
        feed = ChangeFeed(coalesce_s=0.0, forget_after_s=60.0, first_generation=3)
        began = time.monotonic()
        assert await feed.heartbeat("r1", 3, wait_s=0.2) == 3
        assert time.monotonic() - began >= 0.2
        behind = time.monotonic()
        assert await feed.heartbeat("r2", 1, wait_s=30.0) == 3  # behind: answered without waiting
        assert time.monotonic() - behind < 5.0
    run(scenario())


def test_answers_to_one_replica_come_at_least_the_coalescing_time_apart():
    async def scenario():
        feed = ChangeFeed(coalesce_s=0.3, forget_after_s=60.0, first_generation=0)
        await feed.heartbeat("r1", None, wait_s=1.0)  # first answer: at once (behind)
        answered = time.monotonic()
        feed.announce()
        feed.announce()
        assert await feed.heartbeat("r1", 0, wait_s=5.0) == 2  # both changes in one pass
        assert time.monotonic() - answered >= 0.3
    run(scenario())


def test_a_change_waits_until_every_live_replica_applied_it():
    async def scenario():
        feed = ChangeFeed(coalesce_s=0.0, forget_after_s=60.0, first_generation=0)
        await feed.heartbeat("r1", 0)
        await feed.heartbeat("r2", 0)
        generation = feed.announce()
        waiting = asyncio.create_task(feed.wait_until_applied(generation, timeout_s=30.0))
        await feed.heartbeat("r1", generation)
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await feed.heartbeat("r2", generation)
        spread = await waiting
        assert (spread.replicas, spread.pending) == (("r1", "r2"), ())
    run(scenario())


def test_a_slow_replica_is_named_pending_and_a_silent_one_is_forgotten():
    async def scenario():
        feed = ChangeFeed(coalesce_s=0.0, forget_after_s=0.3, first_generation=0)
        await feed.heartbeat("slow", 0)
        generation = feed.announce()
        spread = await feed.wait_until_applied(generation, timeout_s=0.1)
        assert (spread.replicas, spread.pending) == (("slow",), ("slow",))
        # It never beats again: after forget_after_s the change no longer waits for it.
        spread = await feed.wait_until_applied(generation, timeout_s=30.0)
        assert (spread.replicas, spread.pending) == ((), ())
        assert feed.serving() == []
    run(scenario())


def test_serving_lists_replicas_that_synced_and_leave_removes_one():
    async def scenario():
        feed = ChangeFeed(coalesce_s=0.0, forget_after_s=60.0, first_generation=5)
        await feed.heartbeat("loading", None)
        await feed.heartbeat("ready", 5)
        assert feed.serving() == ["ready"]
        feed.leave("ready")
        assert feed.serving() == [] and list(feed.live()) == ["loading"]
    run(scenario())


def test_a_restarted_feed_never_hands_out_a_generation_seen_before():
    async def scenario():
        first = ChangeFeed(coalesce_s=0.0, forget_after_s=60.0)
        seen = max(first.announce() for _ in range(100))
        await asyncio.sleep(0.01)  # a restart takes far longer than 100 ns
        assert ChangeFeed(coalesce_s=0.0, forget_after_s=60.0).generation > seen
    run(scenario())
