"""The lease's two stores (common/lease.py): the local file, written through a hidden temporary file under an
exclusive lock, and the gs:// object, every write conditional on the generation read (an in-memory bucket with
Cloud Storage's semantics). Racing takers and renewers leave exactly one holder on both."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from common.errors import LeaseHeld, LeaseLost
from common.lease import LEASE_FILE, Lease, _GcsStore, _LocalStore, assert_held
from test_lease import FakeClock


def test_a_lease_write_goes_through_a_hidden_file_beside_the_lease(tmp_path, monkeypatch):
    from common import lease as lease_module
    from common.publish import is_bookkeeping

    renamed = []

    def failing_replace(source, destination):
        renamed.append((source, destination))
        raise OSError("disk full")

    monkeypatch.setattr(lease_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        _LocalStore(str(tmp_path / LEASE_FILE)).create({"token": "t", "run_id": "a"})
    ((source, destination),) = renamed
    assert os.path.dirname(source) == str(tmp_path) and destination == str(tmp_path / LEASE_FILE)  # one folder
    assert os.path.basename(source).startswith(".lease-") and is_bookkeeping(os.path.basename(source))
    assert list(tmp_path.iterdir()) == []


def test_a_lease_write_that_fails_leaves_no_temporary_file(tmp_path):
    store = _LocalStore(str(tmp_path / LEASE_FILE))
    with pytest.raises(TypeError):
        store.create({"token": "t", "run_id": object()})
    assert list(tmp_path.iterdir()) == []
    assert store.create({"token": "t1", "run_id": "a"}) == "t1" and store.read() == ({"token": "t1", "run_id": "a"}, "t1")
    assert store.create({"token": "t2", "run_id": "b"}) is None  # there is one already
    assert store.replace({"token": "t3", "run_id": "b"}, "t2") is None  # not the version it is
    store.delete("t2")  # not the version it is: kept
    assert store.read()[1] == "t1"
    store.delete("t1")
    assert store.read() is None and list(tmp_path.iterdir()) == []


# Racing takers and renewers: at most one holder at any time.

ROUNDS, TAKERS, RENEWERS = 20, 5, 2


def race(output: str, monkeypatch, store_class) -> None:
    """Rounds of: a holder that stalled past its expiry; TAKERS runs that see it expired take it over while
    RENEWERS threads of the stalled holder renew it. Exactly one taker wins each round, the lease names it,
    and the stalled holder has lost it. Every store read yields the processor, to widen each race window."""
    real_read = store_class.read

    def slow_read(self):
        found = real_read(self)
        time.sleep(0.0005)
        return found

    monkeypatch.setattr(store_class, "read", slow_read)
    now, later = FakeClock(), FakeClock(1_800_000_000.0 + 60)  # the takers' clock: the holder's lease is over
    for round_ in range(ROUNDS):
        where = f"{output}/round{round_}"
        stalled = Lease.acquire(where, ttl_s=30, renew_every_s=3600, clock=now)
        barrier, won, renewed = threading.Barrier(TAKERS + RENEWERS), [], []

        def take():
            barrier.wait()
            try:
                won.append(Lease.acquire(where, ttl_s=30, renew_every_s=3600, clock=later))
            except LeaseHeld:
                pass

        def renew():
            barrier.wait()
            for _ in range(3):
                renewed.append(stalled.renew())

        threads = [threading.Thread(target=take) for _ in range(TAKERS)]
        threads += [threading.Thread(target=renew) for _ in range(RENEWERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(won) == 1, f"round {round_}: {len(won)} takers won"
        (winner,) = won
        holder = stalled._store.read()[0]["run_id"]
        assert holder == winner.run_id, f"round {round_}: the lease names {holder}, not the winner"
        assert stalled.renew() is False and winner.renew() is True
        with pytest.raises(LeaseLost):
            stalled.check()
        winner.check()
        stalled.release()
        winner.release()
        assert stalled._store.read() is None


def test_racing_takers_and_renewers_leave_exactly_one_holder_locally(tmp_path, monkeypatch):
    race(str(tmp_path), monkeypatch, _LocalStore)


def test_racing_takers_and_renewers_leave_exactly_one_holder_on_gcs(monkeypatch):
    bucket = FakeBucket()
    monkeypatch.setattr("common.fs.gcs_client", lambda: FakeClient(bucket))
    race("gs://bucket/out", monkeypatch, _GcsStore)


def test_a_retried_upload_answering_412_is_not_a_lost_lease(monkeypatch):
    """google-cloud-storage retries an upload whose answer was lost; if the first try had succeeded, the retry's
    precondition fails (412) although the object is this run's own write."""
    bucket = FakeBucket()
    monkeypatch.setattr("common.fs.gcs_client", lambda: FakeClient(bucket))
    bucket.lose_answers = 1  # the creation itself
    held = Lease.acquire("gs://bucket/out", ttl_s=30, renew_every_s=3600)
    assert not held.took_over and json.loads(bucket.objects["out/.lease.json"][0])["run_id"] == held.run_id
    bucket.lose_answers = 1  # a renewal
    assert held.renew() is True
    held.check()
    assert_held("gs://bucket/out", held.run_id)
    # A 412 for another run's write is still a refusal.
    with pytest.raises(LeaseHeld):
        Lease.acquire("gs://bucket/out", ttl_s=30)
    held.release()
    assert bucket.objects == {}
    assert bucket.content_types == {"application/json"} and bucket.names == {"bucket"}


@pytest.mark.parametrize("races", [1, 2, 3])
def test_a_gcs_read_racing_writes_reads_again_a_bounded_number_of_times(races, monkeypatch):
    """The object's generation is listed, then its bytes read on the condition it is still that generation; a
    write in between fails the condition, and the read starts again (three tries in all)."""
    bucket = FakeBucket()
    monkeypatch.setattr("common.fs.gcs_client", lambda: FakeClient(bucket))
    bucket.objects["out/.lease.json"] = (b'{"token": "t2"}', 2)
    real_get_blob, listed = bucket.get_blob, []

    def get_blob(name):
        blob = real_get_blob(name)
        listed.append(name)
        if len(listed) <= races:
            blob.generation -= 1  # listed just before a write replaced it
        return blob

    bucket.get_blob = get_blob
    found = _GcsStore("gs://bucket/out/.lease.json").read()
    assert found == (None if races == 3 else ({"token": "t2"}, 2)) and len(listed) == min(races + 1, 3)


def test_a_stalled_gcs_holder_releasing_does_not_remove_its_takers_lease(monkeypatch):
    bucket = FakeBucket()
    monkeypatch.setattr("common.fs.gcs_client", lambda: FakeClient(bucket))
    clock = FakeClock()
    stalled = Lease.acquire("gs://bucket/out", ttl_s=10, renew_every_s=3600, clock=clock)
    clock.now += 11
    taker = Lease.acquire("gs://bucket/out", ttl_s=10, renew_every_s=3600, clock=clock)
    assert taker.took_over
    stalled.release()  # it does not know it lost the lease: its conditional delete must fail
    assert json.loads(bucket.objects["out/.lease.json"][0])["run_id"] == taker.run_id
    taker.release()
    assert bucket.objects == {}


class FakeBucket:
    """Cloud Storage's object semantics that the lease relies on, in memory: generations, `ifGenerationMatch`
    checked atomically, and (with `lose_answers`) uploads whose success answer is lost, so the client's retry
    is answered 412."""

    def __init__(self):
        self.objects: dict[str, tuple[bytes, int]] = {}
        self.lose_answers = 0
        self.content_types, self.names = set(), set()  # of the uploads; the bucket names clients asked for
        self._lock = threading.Lock()
        self._generation = 0

    def get_blob(self, name):
        with self._lock:
            if name not in self.objects:
                return None
            return FakeBlob(self, name, self.objects[name][1])

    def blob(self, name):
        return FakeBlob(self, name, None)


class FakeClient:
    def __init__(self, bucket: FakeBucket):
        self._bucket = bucket

    def bucket(self, name):
        self._bucket.names.add(name)
        return self._bucket


class FakeBlob:
    def __init__(self, bucket: FakeBucket, name: str, generation):
        self._bucket, self.name, self.generation = bucket, name, generation

    def _check(self, wanted):
        current = self._bucket.objects.get(self.name, (b"", 0))[1]
        if wanted is not None and wanted != current:
            from google.api_core.exceptions import PreconditionFailed

            raise PreconditionFailed("412 Precondition Failed")

    def upload_from_string(self, data, content_type=None, if_generation_match=None):
        bucket = self._bucket
        bucket.content_types.add(content_type)
        with bucket._lock:
            self._check(if_generation_match)
            bucket._generation += 1
            bucket.objects[self.name] = (data.encode() if isinstance(data, str) else data, bucket._generation)
            self.generation = bucket._generation
            lost = bucket.lose_answers > 0
            bucket.lose_answers -= lost
        if lost:  # the client retries the same upload with the same precondition: now 412
            with bucket._lock:
                self._check(if_generation_match)

    def download_as_bytes(self, if_generation_match=None):
        from google.api_core.exceptions import NotFound

        with self._bucket._lock:
            if self.name not in self._bucket.objects:
                raise NotFound("404")
            self._check(if_generation_match)
            return self._bucket.objects[self.name][0]

    def delete(self, if_generation_match=None):
        from google.api_core.exceptions import NotFound

        with self._bucket._lock:
            if self.name not in self._bucket.objects:
                raise NotFound("404")
            self._check(if_generation_match)
            del self._bucket.objects[self.name]
