"""The output lease (common/lease.py): one live holder, renewal, expiry and take-over, release, fencing."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

from common.errors import EXIT_LEASE_HELD, LeaseHeld, LeaseLost
from common.lease import LEASE_FILE, Lease, assert_held


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
    with Lease.acquire(str(tmp_path), ttl_s=0.4) as held:
        first = lease_content(tmp_path)["expires_at"]
        time.sleep(0.5)  # past the first expiry: renewed meanwhile, so still held
        assert lease_content(tmp_path)["expires_at"] > first
        with pytest.raises(LeaseHeld):
            Lease.acquire(str(tmp_path), ttl_s=0.4)
        held.check()


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
    with pytest.raises(LeaseLost, match=f"run {held.run_id} no longer holds the lease"):
        assert_held(str(tmp_path), held.run_id)
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
    assert "no lease on mem:// outputs" in caplog.text
