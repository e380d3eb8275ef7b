"""The output lease (common/lease.py): one live holder, renewal, expiry and take-over, release, fencing."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

from common.errors import EXIT_LEASE_HELD, LeaseHeld, LeaseLost
from common.lease import LEASE_FILE, Lease, assert_held, describe


class FakeClock:
    """Wall-clock seconds that move only when a test moves them."""

    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def lease_content(output) -> dict:
    return json.loads((output / LEASE_FILE).read_text())


def test_a_second_run_is_refused_with_the_holder_named(tmp_path):
    output = tmp_path / "out"
    with Lease.acquire(str(output), ttl_s=60, job="predict") as held:
        content = lease_content(output)
        assert content["run_id"] == held.run_id and content["pid"] == os.getpid()
        assert content["host"] == socket.gethostname() and content["job"] == "predict"
        with pytest.raises(LeaseHeld) as refused:
            Lease.acquire(str(output), ttl_s=60)
        message = str(refused.value)
        assert refused.value.exit_code == EXIT_LEASE_HELD == 75
        assert f"pid {os.getpid()}" in message and socket.gethostname() in message and held.run_id in message
        assert content["started_at"] in message and "\n" not in message
    assert not (output / LEASE_FILE).exists()
    assert sorted(p.name for p in output.iterdir()) == []  # no temporary files left either


def test_the_holder_renews_its_lease(tmp_path):
    clock = FakeClock()
    with Lease.acquire(str(tmp_path), ttl_s=10, renew_every_s=0.01, clock=clock) as held:
        first = lease_content(tmp_path)["expires_at"]
        assert first == clock.now + 10
        clock.now += 8
        assert held.wait_for_renewals(1), "no renewal"  # an event, not a sleep
        clock.now += 8  # past the first expiry: renewed meanwhile, so still held
        assert held.wait_for_renewals(held.renewals + 1)
        assert lease_content(tmp_path)["expires_at"] > first
        with pytest.raises(LeaseHeld):
            Lease.acquire(str(tmp_path), ttl_s=10, clock=clock)
        held.check()


def test_a_lease_not_renewed_expires_by_the_takers_clock(tmp_path):
    clock = FakeClock()
    held = Lease.acquire(str(tmp_path), ttl_s=10, renew_every_s=3600, clock=clock)
    clock.now += 9.9
    with pytest.raises(LeaseHeld):
        Lease.acquire(str(tmp_path), ttl_s=10, clock=clock)
    clock.now += 0.2
    with Lease.acquire(str(tmp_path), ttl_s=10, clock=clock) as taken:
        assert taken.took_over
        assert held.renew() is False  # the stalled holder's renewal cannot overwrite the taker's lease
        assert lease_content(tmp_path)["run_id"] == taken.run_id
        with pytest.raises(LeaseLost):
            held.check()
        held.release()
        assert lease_content(tmp_path)["run_id"] == taken.run_id


def test_an_expired_lease_is_taken_over(tmp_path):
    dead = {"run_id": "deadbeef0000", "host": "elsewhere", "pid": 1, "started_at": "2026-01-01T00:00:00+00:00",
            "renewed_at": time.time() - 100, "expires_at": time.time() - 10}
    (tmp_path / LEASE_FILE).write_text(json.dumps(dead))
    with Lease.acquire(str(tmp_path), ttl_s=30) as taken:
        assert taken.took_over and lease_content(tmp_path)["run_id"] == taken.run_id != "deadbeef0000"
    assert not (tmp_path / LEASE_FILE).exists()


def test_a_garbage_lease_file_counts_as_expired(tmp_path):
    (tmp_path / LEASE_FILE).write_text("{half a lea")
    with Lease.acquire(str(tmp_path), ttl_s=30) as taken:
        assert taken.took_over


def test_a_stalled_holder_finds_its_lease_lost_and_cannot_publish(tmp_path):
    held = Lease.acquire(str(tmp_path), ttl_s=30)
    assert_held(str(tmp_path), held.run_id)
    # Another run took it over (as after this one stalled past its expiry).
    (tmp_path / LEASE_FILE).unlink()
    other = Lease.acquire(str(tmp_path), ttl_s=30)
    with pytest.raises(LeaseLost, match="lost its lease"):
        held.check()
    with pytest.raises(LeaseLost) as lost:
        assert_held(str(tmp_path), held.run_id)
    assert str(lost.value) == (f"run {held.run_id} no longer holds the lease on {tmp_path} (held by "
                               f"{describe(lease_content(tmp_path))}); not publishing")
    held.release()  # must not remove the other run's lease
    assert lease_content(tmp_path)["run_id"] == other.run_id
    other.release()


def test_only_one_of_many_concurrent_takers_wins(tmp_path):
    results, barrier = [], threading.Barrier(8)

    def take():
        barrier.wait()
        try:
            results.append(Lease.acquire(str(tmp_path), ttl_s=30))
        except LeaseHeld:
            results.append(None)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [lease for lease in results if lease is not None]
    assert len(results) == 8 and len(winners) == 1
    assert lease_content(tmp_path)["run_id"] == winners[0].run_id
    winners[0].release()


def test_outputs_without_a_lease_store_are_run_unguarded_with_a_warning(caplog):
    import memfs  # noqa: F401  (registers mem://)

    with caplog.at_level("WARNING"):
        with Lease.acquire("mem://bucket/out", ttl_s=30) as lease:
            lease.check()
            assert lease.output == "mem://bucket/out" and lease.took_over is False
    assert [r.getMessage() for r in caplog.records] == [  # and nothing from its release
        "no lease on mem:// outputs: overlapping runs on mem://bucket/out are not prevented"]


def test_the_holder_is_described_by_host_pid_start_and_run():
    assert describe({"host": "h1", "pid": 7, "started_at": "2026-01-01T00:00:00+00:00", "run_id": "r1"}) == (
        "host h1, pid 7, since 2026-01-01T00:00:00+00:00 (run r1)")
    assert describe({}) == "host ?, pid ?, since ? (run ?)"


def test_a_renewal_extends_the_lease_by_ttl_from_now_with_a_new_token(tmp_path):
    clock = FakeClock()
    with Lease.acquire(str(tmp_path), ttl_s=10, job="predict", renew_every_s=3600, clock=clock) as held:
        before = lease_content(tmp_path)
        assert before["renewed_at"] == clock.now and before["started_at"] == "2027-01-15T08:00:00+00:00"
        clock.now += 5
        assert held.renew() is True and held.renewals == 1
        after = lease_content(tmp_path)
        assert after["renewed_at"] == clock.now and after["expires_at"] == clock.now + 10
        assert after["token"] != before["token"] and len(after["token"]) == 32
        assert {k: v for k, v in after.items() if k not in ("renewed_at", "expires_at", "token")} == {
            k: v for k, v in before.items() if k not in ("renewed_at", "expires_at", "token")}
        clock.now += 5
        assert held.renew() is True and held.renewals == 2  # the second renewal matched the first one's version
        assert lease_content(tmp_path)["expires_at"] == clock.now + 10


def test_a_lost_lease_names_its_new_holder_and_stays_lost(tmp_path, caplog):
    clock = FakeClock()
    held = Lease.acquire(str(tmp_path), ttl_s=10, renew_every_s=3600, clock=clock)
    clock.now += 11
    taker = Lease.acquire(str(tmp_path), ttl_s=10, renew_every_s=3600, clock=clock)
    with caplog.at_level("ERROR", logger="common.lease"):
        assert held.renew() is False
    taken = describe(lease_content(tmp_path))
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"lost the lease on {tmp_path}: it is now held by {taken}"]
    with pytest.raises(LeaseLost) as lost:
        held.check()
    assert str(lost.value) == f"this run lost its lease on {tmp_path} to {taken}; it stops without publishing"
    taker.release()  # the lease is free again, but a lost one is lost for good
    assert held.renew() is False and held.renewals == 0 and not (tmp_path / LEASE_FILE).exists()
    assert held.wait_for_renewals(1) is False  # at once: lost


def test_a_lease_removed_under_its_holder_is_lost_to_nobody(tmp_path):
    held = Lease.acquire(str(tmp_path), ttl_s=10, renew_every_s=3600)
    (tmp_path / LEASE_FILE).unlink()
    assert held.renew() is False
    with pytest.raises(LeaseLost, match=r"lost its lease on .* to nobody \(it was removed\);"):
        held.check()
    with pytest.raises(LeaseLost, match=rf"^run {held.run_id} no longer holds the lease on {tmp_path} \(held by "
                                        r"nobody\); not publishing$"):
        assert_held(str(tmp_path), held.run_id)
    assert_held("mem://bucket/out", "any run")  # no lease store: nothing to check


def test_the_renewal_thread_outlives_a_storage_error_and_stops_when_the_lease_is_lost(tmp_path, caplog):
    held = Lease.acquire(str(tmp_path), ttl_s=10, renew_every_s=0.001)
    store, real_replace, failures = held._store, held._store.replace, [OSError("network down")]

    def flaky_replace(content, version):
        if failures:
            raise failures.pop()
        return real_replace(content, version)

    with caplog.at_level("WARNING", logger="common.lease"):
        store.replace = flaky_replace
        assert held.wait_for_renewals(held.renewals + 2), "no renewal after a storage error"
    assert f"could not renew the lease on {tmp_path}: network down" in [r.getMessage() for r in caplog.records]
    (tmp_path / LEASE_FILE).unlink()  # lost: the thread's next renewal fails, stops it and wakes the waiters
    assert held.wait_for_renewals(held.renewals + 1000) is False
    assert held._lost == "nobody (it was removed)"
    held.release()


def test_waiting_for_renewals_ends_at_release_or_timeout(tmp_path):
    held = Lease.acquire(str(tmp_path), ttl_s=10, renew_every_s=3600)
    assert held.wait_for_renewals(0) is True
    assert held.wait_for_renewals(1, timeout_s=0.01) is False
    waiter = []
    thread = threading.Thread(target=lambda: waiter.append(held.wait_for_renewals(1)))
    thread.start()
    held.release()
    thread.join()
    assert waiter == [False] and held.renewals == 0


def test_a_release_that_cannot_delete_leaves_the_lease_to_expire(tmp_path, caplog):
    held = Lease.acquire(str(tmp_path), ttl_s=10, renew_every_s=3600)

    def failing_delete(_version):
        raise OSError("read-only")

    held._store.delete = failing_delete
    with caplog.at_level("WARNING", logger="common.lease"):
        held.release()
    assert [r.getMessage() for r in caplog.records] == [f"could not release the lease on {tmp_path}: read-only"]
    assert lease_content(tmp_path)["run_id"] == held.run_id


@pytest.mark.parametrize("content, taken", [
    ("", True),  # empty
    ("[1, 2]", True),  # JSON, not a lease
    (json.dumps({"run_id": "old", "expires_at": "soon"}), True),  # an expiry that is no time
    (json.dumps({"run_id": "old"}), True),  # no expiry
    (json.dumps({"run_id": "old", "expires_at": 1_800_000_100.0}), False),  # live, written without a token
])
def test_a_lease_file_this_code_did_not_write_is_live_only_with_an_expiry_to_come(content, taken, tmp_path, caplog):
    (tmp_path / LEASE_FILE).write_text(content)
    clock = FakeClock()
    if not taken:
        with pytest.raises(LeaseHeld) as refused:
            Lease.acquire(str(tmp_path), ttl_s=10, clock=clock)
        assert str(refused.value) == (f"{tmp_path} is being written by another run (host ?, pid ?, since ? (run "
                                      "old)); this run is skipped, try again later")
        clock.now += 100  # at its expiry it is over: taken over, replacing exactly the version it read
    with caplog.at_level("WARNING", logger="common.lease"):
        lease = Lease.acquire(str(tmp_path), ttl_s=10, renew_every_s=3600, clock=clock)
    with lease:
        assert lease.took_over is True and lease.output == str(tmp_path) and lease._renew_every_s == 3600
        written = lease_content(tmp_path)
        assert written["run_id"] == lease.run_id and written["job"] == "" and len(lease.run_id) == 12
        clock.now += 1
        assert lease.renew() and lease_content(tmp_path)["renewed_at"] == clock.now  # the clock it was given
    holder = "old" if "old" in content else "?"
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"taking over the lease of a run that stopped renewing it (host ?, pid ?, since ? (run {holder}))"]


def test_the_lease_is_renewed_every_quarter_of_its_ttl_by_a_daemon_thread(tmp_path):
    before = set(threading.enumerate())
    with Lease.acquire(str(tmp_path), ttl_s=40) as held:
        started = set(threading.enumerate()) - before  # the renewal thread (and any other a test left starting)
        assert started and all(thread.daemon for thread in started)  # a run that never releases is not kept alive
        assert held._renew_every_s == 10 and held.took_over is False
    with Lease.acquire(str(tmp_path), ttl_s=40, renew_every_s=3) as held:
        assert held._renew_every_s == 3


def test_a_lease_released_while_it_is_being_taken_is_taken_at_the_next_attempt(tmp_path, monkeypatch):
    from common.lease import _LocalStore

    real_create, calls = _LocalStore.create, []

    def racing_create(self, content, replacing=None):
        calls.append(replacing)
        if len(calls) == 1:  # another run holds it ...
            return None
        if len(calls) == 2:  # ... and releases it just then
            assert replacing is None
        return real_create(self, content, replacing)

    monkeypatch.setattr(_LocalStore, "create", racing_create)
    with Lease.acquire(str(tmp_path), ttl_s=10, renew_every_s=3600) as lease:
        assert lease.took_over is False and lease_content(tmp_path)["run_id"] == lease.run_id
    assert calls == [None, None]


def test_a_lease_that_keeps_changing_hands_is_given_up_after_ten_attempts(tmp_path, monkeypatch):
    from common.lease import _LocalStore

    (tmp_path / LEASE_FILE).write_text(json.dumps({"run_id": "old", "expires_at": 0, "token": "t"}))
    calls = []
    monkeypatch.setattr(_LocalStore, "create", lambda self, content, replacing=None: calls.append(replacing))
    with pytest.raises(LeaseHeld) as refused:
        Lease.acquire(str(tmp_path), ttl_s=10)
    assert str(refused.value) == (f"{tmp_path} is being written by another run (its lease keeps changing hands); "
                                  "this run is skipped, try again later")
    assert calls == [None, "t"] * 10
