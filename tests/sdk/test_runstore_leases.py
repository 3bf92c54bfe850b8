"""Run leases: one holder at a time, expiry and takeover, renewal, and the LeaseKeeper."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_runstore_support import STORAGE_KINDS, FakeClock, open_storage

from taskloom.contracts import DecodeError, RunHeld, StorageAdapter, UsageError
from taskloom.sdk._runs.records import NS_LEASES
from taskloom.sdk._runs.store import LeaseKeeper, RunStore


@pytest.fixture(params=STORAGE_KINDS)
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageAdapter]:
    async with open_storage(request.param, tmp_path) as opened:
        yield opened


async def test_two_acquirers_one_wins(storage: StorageAdapter) -> None:
    """Of two holders acquiring at once, exactly one gets the lease; the other gets RunHeld."""
    clock = FakeClock()
    first, second = RunStore(storage, clock=clock), RunStore(storage, clock=clock)
    results = await asyncio.gather(
        first.acquire_lease("run1", "worker-a", ttl_s=30),
        second.acquire_lease("run1", "worker-b", ttl_s=30),
        return_exceptions=True,
    )
    held = [r for r in results if isinstance(r, RunHeld)]
    assert len(held) == 1 and results.count(None) == 1
    lease = await first.lease("run1")
    assert lease is not None
    assert held[0].holder == lease.holder
    assert held[0].expires_at == lease.expires_at == clock.now + 30


async def test_many_racing_acquirers_one_wins(storage: StorageAdapter) -> None:
    """Eight stores racing for one run: one lease, seven RunHeld."""
    clock = FakeClock()
    stores = [RunStore(storage, clock=clock) for _ in range(8)]
    results = await asyncio.gather(
        *(s.acquire_lease("run1", f"w{i}") for i, s in enumerate(stores)), return_exceptions=True
    )
    assert results.count(None) == 1
    assert all(isinstance(r, RunHeld) for r in results if r is not None)


async def test_dead_holders_lease_expires_and_is_taken_over(storage: StorageAdapter) -> None:
    """After the TTL passes without renewal, another holder takes the run over."""
    clock = FakeClock()
    store = RunStore(storage, clock=clock)
    await store.acquire_lease("run1", "dead", ttl_s=10)
    clock.advance(9.9)
    with pytest.raises(RunHeld):
        await store.acquire_lease("run1", "new", ttl_s=10)
    clock.advance(0.2)
    await store.acquire_lease("run1", "new", ttl_s=10)
    lease = await store.lease("run1")
    assert lease is not None and lease.holder == "new"


async def test_renew_extends_and_renew_after_loss_is_run_held(storage: StorageAdapter) -> None:
    """Renewing keeps the lease alive; once taken over, the old holder's renew raises RunHeld."""
    clock = FakeClock()
    store = RunStore(storage, clock=clock)
    await store.acquire_lease("run1", "a", ttl_s=10)
    clock.advance(8)
    await store.renew_lease("run1", "a", ttl_s=10)
    clock.advance(8)
    with pytest.raises(RunHeld):
        await store.acquire_lease("run1", "b", ttl_s=10)
    clock.advance(3)
    await store.acquire_lease("run1", "b", ttl_s=10)
    with pytest.raises(RunHeld) as info:
        await store.renew_lease("run1", "a", ttl_s=10)
    assert info.value.holder == "b"


async def test_renew_of_a_released_lease_is_run_held(storage: StorageAdapter) -> None:
    """Renewing a lease that no longer exists raises RunHeld."""
    store = RunStore(storage)
    await store.acquire_lease("run1", "a")
    await store.release_lease("run1", "a")
    with pytest.raises(RunHeld):
        await store.renew_lease("run1", "a")


async def test_release_frees_the_run_and_ignores_others_leases(storage: StorageAdapter) -> None:
    """Release by the holder frees the run; release by anyone else changes nothing."""
    store = RunStore(storage)
    await store.acquire_lease("run1", "a")
    await store.release_lease("run1", "intruder")
    with pytest.raises(RunHeld):
        await store.acquire_lease("run1", "b")
    await store.release_lease("run1", "a")
    await store.acquire_lease("run1", "b")


async def test_same_holder_reacquires(storage: StorageAdapter) -> None:
    """A holder acquiring its own live lease again refreshes it."""
    clock = FakeClock()
    store = RunStore(storage, clock=clock)
    await store.acquire_lease("run1", "a", ttl_s=5)
    clock.advance(4)
    await store.acquire_lease("run1", "a", ttl_s=5)
    lease = await store.lease("run1")
    assert lease is not None and lease.expires_at == clock.now + 5


async def test_bad_ttl_is_a_usage_error(storage: StorageAdapter) -> None:
    """A ttl that is not a positive number raises UsageError."""
    store = RunStore(storage)
    for ttl in (0, -1, float("nan"), True):
        with pytest.raises(UsageError):
            await store.acquire_lease("run1", "a", ttl_s=ttl)


async def test_damaged_lease_is_a_decode_error(storage: StorageAdapter) -> None:
    """A lease record that does not decode raises DecodeError naming leases/<run>."""
    store = RunStore(storage)
    await storage.put(NS_LEASES, "run1", b'{"format":1,"holder":3}')
    with pytest.raises(DecodeError, match="leases/run1"):
        await store.acquire_lease("run1", "a")


async def test_lease_keeper_renews_while_running(storage: StorageAdapter) -> None:
    """Inside LeaseKeeper the lease is renewed every ttl/3 and released at the end."""
    store = RunStore(storage)
    async with LeaseKeeper(store, "run1", "a", ttl_s=0.15) as keeper:
        await asyncio.sleep(0.4)
        with pytest.raises(RunHeld):
            await store.acquire_lease("run1", "b", ttl_s=1)
    assert keeper.renewals >= 1
    assert await store.lease("run1") is None


async def test_lease_keeper_refuses_a_held_run(storage: StorageAdapter) -> None:
    """Entering a LeaseKeeper for a run another live holder has raises RunHeld."""
    store = RunStore(storage)
    await store.acquire_lease("run1", "other", ttl_s=60)
    with pytest.raises(RunHeld):
        async with LeaseKeeper(store, "run1", "a", ttl_s=60):
            pytest.fail("the block must not run")


async def test_lease_keeper_stops_the_block_when_the_lease_is_lost() -> None:
    """When a renewal finds the lease taken, the block is cancelled and RunHeld is raised."""
    from taskloom.adapters.memory import MemoryStorage

    clock = FakeClock()
    storage = MemoryStorage()
    store = RunStore(storage, clock=clock)
    reached_end = False
    with pytest.raises(RunHeld) as info:
        async with LeaseKeeper(store, "run1", "a", ttl_s=0.09):
            clock.advance(1)  # the holder stalls past its TTL...
            await store.acquire_lease("run1", "b", ttl_s=60)  # ...and is taken over
            await asyncio.sleep(5)
            reached_end = True
    assert not reached_end
    assert info.value.holder == "b"
    lease = await store.lease("run1")
    assert lease is not None and lease.holder == "b"  # the new holder's lease is untouched


async def test_lease_keeper_on_lost_callback() -> None:
    """With on_lost, the callback gets RunHeld and the block is not cancelled."""
    from taskloom.adapters.memory import MemoryStorage

    clock = FakeClock()
    store = RunStore(MemoryStorage(), clock=clock)
    seen: list[RunHeld] = []
    async with LeaseKeeper(store, "run1", "a", ttl_s=0.06, on_lost=seen.append) as keeper:
        clock.advance(1)
        await store.acquire_lease("run1", "b", ttl_s=60)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
    assert len(seen) == 1 and keeper.lost is seen[0]


async def test_lease_keeper_survives_a_transient_storage_error() -> None:
    """A renewal that fails on a storage error is retried at the next tick; the lease stays."""
    from taskloom.adapters.memory import MemoryStorage
    from taskloom.contracts import StorageUnavailable

    storage = MemoryStorage()
    store = RunStore(storage)
    original_put = storage.put
    failures = {"left": 1}

    async def flaky_put(namespace: str, key: str, value: bytes, **kw: object) -> object:
        if namespace == NS_LEASES and failures["left"] and await storage.get(namespace, key):
            failures["left"] -= 1
            raise StorageUnavailable("disk busy (injected)")
        return await original_put(namespace, key, value, **kw)  # type: ignore[arg-type]

    storage.put = flaky_put  # type: ignore[method-assign]
    async with LeaseKeeper(store, "run1", "a", ttl_s=0.15) as keeper:
        for _ in range(100):
            if keeper.renewals >= 1:
                break
            await asyncio.sleep(0.02)
    assert failures["left"] == 0
    assert keeper.renewals >= 1 and keeper.lost is None


async def test_revoked_lease_is_lost_by_its_holder() -> None:
    """revoke_lease takes a live lease away; its holder's next renewal raises RunHeld."""
    from taskloom.adapters.memory import MemoryStorage

    async with RunStore(MemoryStorage()) as store:
        assert await store.revoke_lease("run-1") is None
        await store.acquire_lease("run-1", "worker-a", ttl_s=30)
        revoked = await store.revoke_lease("run-1")
        assert revoked is not None and revoked.holder == "worker-a"
        assert await store.lease("run-1") is None
        with pytest.raises(RunHeld):
            await store.renew_lease("run-1", "worker-a", ttl_s=30)
