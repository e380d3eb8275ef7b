"""A lease on an output folder, so two runs of a job never work on one output at once.

    with Lease.acquire(output, ttl_s=120) as lease:   # LeaseHeld if another live run holds it
        ...                                           # renewed every ttl_s / 4 seconds meanwhile
        lease.check()                                 # LeaseLost if it was taken over (we stalled)

The lease is `<output>/.lease.json`: who holds it (run id, host, pid, start time), until when, and a token
that every write makes afresh. It fences: at any time at most one run holds it, whatever takers and renewals
race. Every change (create, take-over, renewal, release) is conditional on the version it read: locally the
read, the comparison and the write happen under an exclusive `flock` of the output folder (held for
microseconds; the kernel drops it if the process dies); on gs:// each write carries the precondition
`ifGenerationMatch` (0: no object yet; else the generation read), which Cloud Storage checks atomically, so
it holds across machines. A 412 that answers a client's retry of an upload that had succeeded is recognised
by the token and is not a lost lease. A lease whose holder stopped renewing it (crashed, killed) expires
after `ttl_s` and the next run takes it over; a holder whose renewal finds another's version has lost it
for good (`check()` raises LeaseLost). Only a holder removes staging, so staging is never removed under a
live run. Expiry compares the holder's wall clock with the taker's: hosts need clocks that agree to well
within `ttl_s` (NTP does).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from typing import Callable

from common import fs
from common.errors import LeaseHeld, LeaseLost

_LOG = logging.getLogger(__name__)

LEASE_FILE = ".lease.json"
DEFAULT_TTL_S = 120.0
_ATTEMPTS = 10  # tries to take a lease that changes hands (released, renewed by a stalled holder)


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="seconds")


class _LocalStore:
    """The lease as a local file. Every change (create, take over, renew, release) reads, compares and writes
    while holding an exclusive `flock` on the output folder itself, so two changes never interleave; the kernel
    drops the lock of a process that dies. Each write carries a fresh token, which is the version."""

    def __init__(self, path: str):
        self.path = path

    def read(self) -> tuple[dict, object] | None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        try:
            content = json.loads(data or b"{}")
        except ValueError:  # garbage, not a lease this code wrote: treat it as expired
            content = None
        if not isinstance(content, dict) or not content.get("token"):  # versioned by its bytes instead
            return content if isinstance(content, dict) else {}, "sha256:" + hashlib.sha256(data).hexdigest()
        return content, content["token"]

    @contextlib.contextmanager
    def _locked(self):
        folder = os.path.dirname(self.path)
        os.makedirs(folder, exist_ok=True)
        handle = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            os.close(handle)  # closing drops the lock

    def _write(self, content: dict) -> object:
        handle, temporary = tempfile.mkstemp(prefix=".lease-", dir=os.path.dirname(self.path))
        try:
            with os.fdopen(handle, "w") as f:
                json.dump(content, f)
            os.replace(temporary, self.path)
        except BaseException:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise
        return content["token"]

    def create(self, content: dict, replacing=None) -> object | None:
        """Write the lease if there is none (or, with `replacing`, if it is still that version); return the
        new version, or None when another run got there first."""
        with self._locked():
            current = self.read()
            free = current is None if replacing is None else current is not None and current[1] == replacing
            return self._write(content) if free else None

    def replace(self, content: dict, version) -> object | None:
        with self._locked():
            current = self.read()
            if current is None or current[1] != version:
                return None
            return self._write(content)

    def delete(self, version) -> None:
        with self._locked():
            current = self.read()
            if current is not None and current[1] == version:
                os.remove(self.path)


class _GcsStore:
    """The lease as a Cloud Storage object; versions are object generations, every write conditional.

    The client retries an upload whose answer was lost; when the first try had succeeded, the retry answers 412
    (Precondition Failed) although the object is the one this run wrote. So a 412 is a refusal only when the
    object does not hold this write's token."""

    def __init__(self, path: str):
        bucket, _, self._name = path[len("gs://"):].partition("/")
        self.path = path
        self._bucket = fs.gcs_client().bucket(bucket)

    def _blob(self):
        return self._bucket.blob(self._name)

    def read(self) -> tuple[dict, object] | None:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        for _ in range(3):
            blob = self._bucket.get_blob(self._name)
            if blob is None:
                return None
            generation = blob.generation
            try:
                data = blob.download_as_bytes(if_generation_match=generation)
            except (NotFound, PreconditionFailed):  # replaced or removed between the two calls
                continue
            try:
                return json.loads(data or b"{}"), generation
            except ValueError:
                return {}, generation
        return None

    def _write(self, content: dict, generation) -> object | None:
        from google.api_core.exceptions import PreconditionFailed

        blob = self._blob()
        try:
            blob.upload_from_string(json.dumps(content), content_type="application/json",
                                    if_generation_match=generation)
        except PreconditionFailed:
            found = self.read()
            if found is not None and isinstance(found[0], dict) and found[0].get("token") == content["token"]:
                return found[1]  # a retried upload of a write that had succeeded
            return None
        return blob.generation

    def create(self, content: dict, replacing=None) -> object | None:
        return self._write(content, 0 if replacing is None else replacing)

    def replace(self, content: dict, version) -> object | None:
        return self._write(content, version)

    def delete(self, version) -> None:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        try:
            self._blob().delete(if_generation_match=version)
        except (NotFound, PreconditionFailed):
            pass


def _store(output: str):
    path = fs.join(output, LEASE_FILE)
    if not fs.is_remote(output):
        return _LocalStore(path)
    if output.startswith("gs://"):
        return _GcsStore(path)
    return None


def describe(holder: dict) -> str:
    """'host H, pid P, since T' for a lease's content."""
    return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
            f"since {holder.get('started_at', '?')} (run {holder.get('run_id', '?')})")


class Lease:
    """A held lease on one output; renewed by a daemon thread every `renew_every_s` (ttl_s / 4) until
    `release()`. `renewals` counts the renewals written; `wait_for_renewals` waits on them.

    `clock` (time.time) is what expiry is judged by; tests pass their own instead of sleeping."""

    def __init__(self, output: str, store, content: dict, version, ttl_s: float, took_over: bool,
                 renew_every_s: float | None = None, clock: Callable[[], float] = time.time):
        self.output, self.ttl_s, self.took_over = output, ttl_s, took_over
        self.run_id = content["run_id"]
        self.renewals = 0
        self._store, self._content, self._version, self._clock = store, content, version, clock
        self._renew_every_s = ttl_s / 4 if renew_every_s is None else renew_every_s
        self._lost: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._renewed = threading.Condition()
        if store is not None:
            threading.Thread(target=self._renew_until_released, daemon=True, name="lease").start()

    @classmethod
    def acquire(cls, output: str, ttl_s: float = DEFAULT_TTL_S, job: str = "", renew_every_s: float | None = None,
                clock: Callable[[], float] = time.time) -> "Lease":
        """Take the lease on `output`, or raise LeaseHeld naming the live holder. An expired lease (its
        holder stopped renewing it) is taken over; `took_over` says so."""
        store = _store(output)
        content = _content(uuid.uuid4().hex[:12], job, clock(), ttl_s)
        if store is None:
            _LOG.warning("no lease on %s:// outputs: overlapping runs on %s are not prevented",
                         output.split("://")[0], output)
            return cls(output, None, content, None, ttl_s, took_over=False)
        for _ in range(_ATTEMPTS):  # each failed attempt means another write won: bounded, as writes are
            version = store.create(content)
            if version is not None:
                return cls(output, store, content, version, ttl_s, False, renew_every_s, clock)
            found = store.read()
            if found is None:
                continue  # released meanwhile: try again
            holder, held_version = found
            if clock() < _expiry(holder):
                raise LeaseHeld(f"{output} is being written by another run ({describe(holder)}); "
                                "this run is skipped, try again later")
            _LOG.warning("taking over the lease of a run that stopped renewing it (%s)", describe(holder))
            content = dict(content, token=uuid.uuid4().hex)
            version = store.create(content, replacing=held_version)
            if version is not None:
                return cls(output, store, content, version, ttl_s, True, renew_every_s, clock)
            content = dict(content, token=uuid.uuid4().hex)
        raise LeaseHeld(f"{output} is being written by another run (its lease keeps changing hands); "
                        "this run is skipped, try again later")

    def renew(self) -> bool:
        """Extend the lease by ttl_s from now, if this run still holds it; False once it is lost (then for good).
        A storage error propagates: the lease lasts until its expiry, and the next renewal tries again."""
        with self._lock:
            if self._lost:
                return False
            now = self._clock()
            content = dict(self._content, renewed_at=now, expires_at=now + self.ttl_s, token=uuid.uuid4().hex)
            version = self._store.replace(content, self._version)
            if version is None:
                found = self._store.read()
                self._lost = describe(found[0]) if found else "nobody (it was removed)"
                _LOG.error("lost the lease on %s: it is now held by %s", self.output, self._lost)
                return False
            self._content, self._version = content, version
        with self._renewed:
            self.renewals += 1
            self._renewed.notify_all()
        return True

    def wait_for_renewals(self, count: int, timeout_s: float = 60.0) -> bool:
        """Wait until `count` renewals have been written (or the lease is lost or released)."""
        with self._renewed:
            return self._renewed.wait_for(lambda: self.renewals >= count or self._lost or self._stop.is_set(),
                                          timeout_s) and self.renewals >= count

    def _renew_until_released(self) -> None:
        while not self._stop.wait(self._renew_every_s):
            if self._stop.is_set():
                return
            try:
                if not self.renew():
                    with self._renewed:
                        self._renewed.notify_all()
                    return
            except Exception as exc:  # a passing network error: the lease lasts ttl_s, try again soon
                _LOG.warning("could not renew the lease on %s: %s", self.output, exc)

    def check(self) -> None:
        """Raise LeaseLost if another run took the lease over (this one stalled past its expiry)."""
        if self._lost:
            raise LeaseLost(f"this run lost its lease on {self.output} to {self._lost}; it stops without "
                            "publishing")
        if self._store is not None:
            found = self._store.read()
            if found is None or found[0].get("run_id") != self.run_id:
                raise LeaseLost(f"this run lost its lease on {self.output}; it stops without publishing")

    def release(self) -> None:
        self._stop.set()
        with self._lock:
            if self._store is not None and not self._lost:
                try:
                    self._store.delete(self._version)
                except Exception as exc:  # it expires by itself
                    _LOG.warning("could not release the lease on %s: %s", self.output, exc)
        with self._renewed:
            self._renewed.notify_all()

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _content(run_id: str, job: str, now: float, ttl_s: float) -> dict:
    return {"run_id": run_id, "job": job, "host": socket.gethostname(), "pid": os.getpid(), "started_at": _iso(now),
            "renewed_at": now, "expires_at": now + ttl_s, "token": uuid.uuid4().hex}


def _expiry(holder: dict) -> float:
    try:
        return float(holder.get("expires_at", 0))
    except (TypeError, ValueError):
        return 0.0


def assert_held(output: str, run_id: str) -> None:
    """For the publishing step, wherever it runs: raise LeaseLost unless `run_id` holds the lease."""
    store = _store(output)
    if store is None:
        return
    found = store.read()
    if found is None or found[0].get("run_id") != run_id:
        holder = describe(found[0]) if found else "nobody"
        raise LeaseLost(f"run {run_id} no longer holds the lease on {output} (held by {holder}); not publishing")
