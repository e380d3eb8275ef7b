"""Decoding ahead: several isolated decoders (video.isolated) work on the next videos while the caller does
something else with the ones already decoded (embeds them), a bounded number of videos in flight.

`DecodeAhead(work, decoders, ...)` runs `work(decoder, item, emit)` for each submitted item on one of
`decoders` threads, each owning one `IsolatedDecoder` (its child process does the decoding, so the threads
mostly wait on a pipe and leave the interpreter to the caller). `work` returns the item's final outcome and
may `emit` partial outcomes on the way (the chunks of windows of `predict --segments`). The caller's thread
gets the outcomes in the order they finish: `submit(item)` yields those finished so far and blocks only while
`max_in_flight` items are in flight; `drain()` yields the rest. An exception `work` raises (a programming
error: a bad file is an outcome) is raised again in the caller's thread, with its traceback.

Memory stays bounded: at most `max_in_flight` items are submitted and not yet finished, and at most
`max_buffered` outcomes wait for the caller (a decoder thread with one more waits, and so does its child).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Any, Callable, Iterator

from video.isolated import IsolatedDecoder

_STOP = object()


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What `work` gave for `item`: `value`, and whether it is the item's last (`final`)."""

    item: Any
    value: Any
    final: bool


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


class DecodeAhead:
    """A pool of `decoders` isolated decoders working ahead of the caller (see the module docstring).

    `make_decoder()` builds one decoder (default: `IsolatedDecoder(timeout_s)`). Not thread-safe: one
    caller thread submits and drains."""

    def __init__(self, work: Callable[[Any, Any, Callable[[Any], None]], Any], decoders: int,
                 max_in_flight: int | None = None, max_buffered: int | None = None, timeout_s: float = 120.0,
                 make_decoder: Callable[[], Any] | None = None):
        if decoders < 1:
            raise ValueError(f"decoders must be at least 1, got {decoders}")
        self.decoders = decoders
        self.max_in_flight = max_in_flight or 2 * decoders
        self._work = work
        self._make_decoder = make_decoder or (lambda: IsolatedDecoder(timeout_s=timeout_s))
        self._todo: queue.Queue = queue.Queue()
        self._done: queue.Queue = queue.Queue(maxsize=max_buffered or self.max_in_flight)
        self._in_flight = 0
        self._threads: list[threading.Thread] = []
        self._busy: dict[int, Any] = {}  # thread number -> its decoder, while it works on an item
        self.peak_in_flight = 0

    @property
    def in_flight(self) -> int:
        """Items submitted whose final outcome the caller has not taken yet."""
        return self._in_flight

    def _start(self) -> None:
        for number in range(self.decoders):
            thread = threading.Thread(target=self._serve, args=(number,), daemon=True, name=f"decode-ahead-{number}")
            # Listed before it starts: Ctrl-C can raise in `start` once the thread runs, and `close` stops only
            # the threads it knows of (a thread listed but never started is not alive, and is not waited for).
            self._threads.append(thread)
            thread.start()

    def _serve(self, number: int) -> None:
        decoder = failed = None
        try:
            decoder = self._make_decoder()
        except BaseException as exc:  # each item this thread takes fails with it, in the caller's thread
            failed = _Failed(exc)
        try:
            while (item := self._todo.get()) is not _STOP:
                if failed is not None:
                    self._done.put(Outcome(item, failed, True))
                    continue
                self._busy[number] = decoder
                try:
                    value = self._work(decoder, item, lambda partial, item=item: self._done.put(Outcome(item, partial, False)))
                except BaseException as exc:  # raised again in the caller's thread
                    value = _Failed(exc)
                finally:
                    self._busy.pop(number, None)
                self._done.put(Outcome(item, value, True))
        finally:
            if decoder is not None:
                decoder.close()

    def submit(self, item) -> Iterator[Outcome]:
        """Queue `item`; yield the outcomes finished so far, waiting for more only while `max_in_flight`
        items are in flight."""
        if not self._threads:
            self._start()
        self._todo.put(item)
        self._in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        while True:
            try:
                outcome = self._done.get_nowait()
            except queue.Empty:
                break
            yield self._taken(outcome)
        while self._in_flight >= self.max_in_flight:
            yield self._taken(self._done.get())

    def drain(self) -> Iterator[Outcome]:
        """Yield every outcome still to come, until no item is in flight."""
        while self._in_flight:
            yield self._taken(self._done.get())

    def _taken(self, outcome: Outcome) -> Outcome:
        if outcome.final:
            self._in_flight -= 1
            if isinstance(outcome.value, _Failed):
                raise outcome.value.exc
        return outcome

    def close(self) -> None:
        """Stop the threads and their decoders; a decoder still working (after an error) is killed."""
        while True:  # items not started are dropped
            try:
                self._todo.get_nowait()
            except queue.Empty:
                break
        for _ in self._threads:
            self._todo.put(_STOP)
        for decoder in list(self._busy.values()):
            decoder.kill()
        while any(thread.is_alive() for thread in self._threads):
            try:  # a thread waiting to hand over an outcome nobody will take
                self._done.get(timeout=0.05)
            except queue.Empty:
                pass
        self._threads = []
        self._in_flight = 0
