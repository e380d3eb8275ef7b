"""Decoding ahead (video.ahead): decoders keep working while the caller holds what they gave, at most
`max_in_flight` items in flight, partial outcomes before the final one, and a worker's exception raised in the
caller's thread. Fake decoders and events: no process, no timing."""

from __future__ import annotations

import threading

import pytest

from video.ahead import DecodeAhead


class FakeDecoder:
    closed = 0

    def close(self):
        FakeDecoder.closed += 1

    def kill(self):
        pass


def test_decoders_work_ahead_while_the_caller_holds_an_outcome():
    """While the caller still works on item 0's outcome (embeds it), item 1 is decoded: if the pool decoded
    only when asked, the wait below would never end."""
    finished = {i: threading.Event() for i in range(3)}

    def work(decoder, item, emit):
        finished[item].set()
        return item * 10

    pool = DecodeAhead(work, decoders=2, max_in_flight=4, make_decoder=FakeDecoder)
    try:
        taken = []
        for item in range(3):
            for outcome in pool.submit(item):
                taken.append(outcome.value)
        for outcome in pool.drain():
            if not taken:
                assert finished[1].wait(60) and finished[2].wait(60)  # decoded while the caller is busy
            taken.append(outcome.value)
        assert sorted(taken) == [0, 10, 20] and pool.in_flight == 0
    finally:
        pool.close()


def test_at_most_max_in_flight_items_and_decoders_at_once():
    """With 3 in flight and none able to finish, a 4th submit waits: it returns only once the test lets one
    item finish (the check that it waits gives a wrong pool half a second to show itself; a right one
    passes whatever the load)."""
    lock, running, most = threading.Lock(), [0], [0]
    gate = threading.Semaphore(0)

    def work(decoder, item, emit):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        gate.acquire()  # the test lets items finish one at a time
        with lock:
            running[0] -= 1
        return item

    pool = DecodeAhead(work, decoders=2, max_in_flight=3, make_decoder=FakeDecoder)
    taken, returned = [], threading.Event()
    try:
        for item in range(2):
            taken += [o.value for o in pool.submit(item)]
        assert taken == [] and pool.in_flight == 2

        def third():
            taken.extend(o.value for o in pool.submit(2))
            returned.set()

        caller = threading.Thread(target=third)
        caller.start()
        assert not returned.wait(0.5)  # waiting for room: nothing can finish yet
        gate.release()
        caller.join(60)
        assert returned.is_set() and len(taken) == 1 and pool.in_flight == 2
        for item in range(3, 10):
            gate.release()
            taken += [o.value for o in pool.submit(item)]
            assert pool.in_flight < 3
        for _ in range(3):
            gate.release()
        taken += [o.value for o in pool.drain()]
    finally:
        for _ in range(10):  # no item stays blocked, whatever failed
            gate.release()
        pool.close()
    assert sorted(taken) == list(range(10))
    assert pool.peak_in_flight == 3 and most[0] <= 2


def test_partial_outcomes_come_before_the_final_one_and_a_workers_error_reaches_the_caller():
    def work(decoder, item, emit):
        if item == "bug":
            raise ZeroDivisionError("a programming error")
        emit(f"{item}-chunk-1")
        emit(f"{item}-chunk-2")
        return f"{item}-whole"

    FakeDecoder.closed = 0
    pool = DecodeAhead(work, decoders=1, make_decoder=FakeDecoder)
    try:
        outcomes = [*pool.submit("a"), *pool.drain()]
        assert [(o.value, o.final) for o in outcomes] == [("a-chunk-1", False), ("a-chunk-2", False),
                                                           ("a-whole", True)]
        with pytest.raises(ZeroDivisionError, match="a programming error"):
            [*pool.submit("bug"), *pool.drain()]
    finally:
        pool.close()
    assert FakeDecoder.closed == 1


def test_a_decoder_that_cannot_start_fails_each_item_in_the_caller():
    def broken():
        raise RuntimeError("the frame decoder process did not start")

    pool = DecodeAhead(lambda decoder, item, emit: item, decoders=1, make_decoder=broken)
    try:
        with pytest.raises(RuntimeError, match="did not start"):
            [*pool.submit(1), *pool.drain()]
    finally:
        pool.close()


def test_close_after_ctrl_c_while_a_decoder_thread_was_starting_ends_every_thread(monkeypatch):
    """Ctrl-C raises KeyboardInterrupt in the caller wherever it is, also inside `Thread.start` once the thread
    runs (it waits there for the thread to say it started). A thread started but not yet listed got no stop
    from `close`, which then waited for it forever: Ctrl-C on a featurize job in process hung."""
    real_start, started = threading.Thread.start, []

    def start_then_ctrl_c(thread):
        real_start(thread)
        started.append(thread)
        if len(started) == 2:
            raise KeyboardInterrupt

    pool = DecodeAhead(lambda decoder, item, emit: item, decoders=2, make_decoder=FakeDecoder)
    monkeypatch.setattr(threading.Thread, "start", start_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        list(pool.submit("a"))
    monkeypatch.undo()
    closing = threading.Thread(target=pool.close, daemon=True)
    closing.start()
    closing.join(timeout=30)
    assert not closing.is_alive(), "close() waits for a decoder thread it never stopped"
    assert not any(thread.is_alive() for thread in started)
