"""A lease on an output folder, so two runs of a job never work on one output at once.

    with Lease.acquire(output, ttl_s=120) as lease:   # LeaseHeld if another live run holds it
        ...                                           # renewed every ttl_s / 4 seconds meanwhile
        lease.check()                                 # LeaseLost if it was taken over (we stalled)

The lease is `<output>/.lease.json`: who holds it (run id, host, pid, start time) and until when. It is
created atomically: locally as a hard link of a complete temporary file (a link fails if the name exists);
on gs:// as an upload with the precondition "no object of this name" (`ifGenerationMatch=0`), so it holds
across machines. Renewals and the release are conditional on the holder's own version. A lease whose holder
stopped renewing it (crashed, killed) expires after `ttl_s` and the next run takes it over; only a holder
removes staging, so staging is never removed under a live run. Expiry compares the holder's wall clock with
the taker's: hosts need clocks that agree to well within `ttl_s` (NTP does).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid

from common import fs
from common.errors import LeaseHeld, LeaseLost

_LOG = logging.getLogger(__name__)

LEASE_FILE = ".lease.json"
DEFAULT_TTL_S = 120.0


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="seconds")


class _LocalStore:
    """The lease as a local file; versions are (inode, mtime_ns) pairs."""

    def __init__(self, path: str):
        self.path = path

    def read(self) -> tuple[dict, object] | None:
        try:
            with open(self.path, "rb") as f:
                info = os.fstat(f.fileno())
                data = f.read()
        except FileNotFoundError:
            return None
        version = (info.st_ino, info.st_mtime_ns)
        try:
            return json.loads(data or b"{}"), version
        except ValueError:  # garbage, not a lease this code wrote: treat it as expired
            return {}, version

    def _complete_file(self, content: dict) -> str:
        folder = os.path.dirname(self.path)
        handle, temporary = tempfile.mkstemp(prefix=".lease-", dir=folder)
        with os.fdopen(handle, "w") as f:
            json.dump(content, f)
        return temporary

    def create(self, content: dict, replacing=None) -> object | None:
        """Write the lease if there is none (or, with `replacing`, if it is still that version); return the
        new version, or None when another run got there first."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        if replacing is not None:
            aside = f"{self.path}.expired-{uuid.uuid4().hex[:8]}"
            current = self.read()
            if current is None or current[1] != replacing:
                return None
            try:
                os.rename(self.path, aside)  # only one taker can move it aside
            except FileNotFoundError:
                return None
            os.remove(aside)
        temporary = self._complete_file(content)
        try:
            os.link(temporary, self.path)
        except FileExistsError:
            return None
        finally:
            os.remove(temporary)
        found = self.read()
        return found[1] if found else None

    def replace(self, content: dict, version) -> object | None:
        current = self.read()
        if current is None or current[1] != version:
            return None
        temporary = self._complete_file(content)
        os.replace(temporary, self.path)
        found = self.read()
        return found[1] if found else None

    def delete(self, version) -> None:
        current = self.read()
        if current is not None and current[1] == version:
            os.remove(self.path)


class _GcsStore:
    """The lease as a Cloud Storage object; versions are object generations, every write conditional."""

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
    """A held lease on one output; renewed by a daemon thread until `release()`."""

    def __init__(self, output: str, store, content: dict, version, ttl_s: float, took_over: bool):
        self.output, self.ttl_s, self.took_over = output, ttl_s, took_over
        self.run_id = content["run_id"]
        self._store, self._content, self._version = store, content, version
        self._lost: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        if store is not None:
            threading.Thread(target=self._renew_until_released, daemon=True, name="lease").start()

    @classmethod
    def acquire(cls, output: str, ttl_s: float = DEFAULT_TTL_S, job: str = "") -> "Lease":
        """Take the lease on `output`, or raise LeaseHeld naming the live holder. An expired lease (its
        holder stopped renewing it) is taken over; `took_over` says so."""
        store = _store(output)
        now = time.time()
        content = {"run_id": uuid.uuid4().hex[:12], "job": job, "host": socket.gethostname(), "pid": os.getpid(),
                   "started_at": _iso(now), "renewed_at": now, "expires_at": now + ttl_s}
        if store is None:
            _LOG.warning("no lease on %s:// outputs: overlapping runs on %s are not prevented",
                         output.split("://")[0], output)
            return cls(output, None, content, None, ttl_s, took_over=False)
        for _ in range(3):
            version = store.create(content)
            if version is not None:
                return cls(output, store, content, version, ttl_s, took_over=False)
            found = store.read()
            if found is None:
                continue  # released meanwhile: try again
            holder, held_version = found
            if time.time() < float(holder.get("expires_at", 0)):
                raise LeaseHeld(f"{output} is being written by another run ({describe(holder)}); "
                                "this run is skipped, try again later")
            _LOG.warning("taking over the lease of a run that stopped renewing it (%s)", describe(holder))
            version = store.create(content, replacing=held_version)
            if version is not None:
                return cls(output, store, content, version, ttl_s, took_over=True)
        raise LeaseHeld(f"{output} is being written by another run (its lease keeps changing hands); "
                        "this run is skipped, try again later")

    def _renew_until_released(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            with self._lock:
                if self._stop.is_set() or self._lost:
                    return
                now = time.time()
                content = dict(self._content, renewed_at=now, expires_at=now + self.ttl_s)
                try:
                    version = self._store.replace(content, self._version)
                except Exception as exc:  # a passing network error: the lease lasts ttl_s, try again soon
                    _LOG.warning("could not renew the lease on %s: %s", self.output, exc)
                    continue
                if version is None:
                    found = self._store.read()
                    self._lost = describe(found[0]) if found else "nobody (it was removed)"
                    _LOG.error("lost the lease on %s: it is now held by %s", self.output, self._lost)
                    return
                self._content, self._version = content, version

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

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def assert_held(output: str, run_id: str) -> None:
    """For the publishing step, wherever it runs: raise LeaseLost unless `run_id` holds the lease."""
    store = _store(output)
    if store is None:
        return
    found = store.read()
    if found is None or found[0].get("run_id") != run_id:
        holder = describe(found[0]) if found else "nobody"
        raise LeaseLost(f"run {run_id} no longer holds the lease on {output} (held by {holder}); not publishing")
