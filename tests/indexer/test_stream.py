"""The ordered, bounded stream under the indexer: order, back-pressure, and no stage that
can stall a run."""

from __future__ import annotations

import threading
import time

import pytest

from dreamsearch.indexer.stream import Workers, ordered


def test_results_come_in_order_and_never_more_than_ahead_are_waiting():
    workers = Workers(3, "test")
    started = 0
    lock = threading.Lock()

    def work(item: int) -> int:
        nonlocal started
        with lock:
            started += 1
        time.sleep(0.001 * (item % 3))  # finish out of order
        return item * 10

    most_waiting = 0
    results = []
    for taken, result in enumerate(ordered(workers, work, range(200), ahead=8, timeout_s=10, on_timeout=None)):
        time.sleep(0.002)  # a consumer slower than the threads (the model)
        with lock:
            most_waiting = max(most_waiting, started - (taken + 1))  # begun, not yet taken
        results.append(result)
    workers.close()
    assert results == [i * 10 for i in range(200)]
    assert most_waiting <= 8  # memory does not grow with the number of items


def test_a_stuck_item_is_given_up_and_the_rest_still_flow_through_one_thread():
    workers = Workers(1, "test")
    release = threading.Event()

    def work(item: int) -> str:
        if item == 2:
            release.wait(60)  # a read that never returns (a hung network share)
        return f"ok {item}"

    results = list(ordered(workers, work, range(6), ahead=4, timeout_s=0.5, on_timeout=lambda i: f"gave up {i}"))
    release.set()
    workers.close()
    assert results == ["ok 0", "ok 1", "gave up 2", "ok 3", "ok 4", "ok 5"]
    stuck = [t for t in threading.enumerate() if t.name.startswith("test-")]
    assert all(t.daemon for t in stuck)  # none of them can keep the process alive


def test_a_failure_while_listing_items_reaches_the_consumer():
    def items():
        yield 1
        raise OSError("the share went away")

    workers = Workers(2, "test")
    with pytest.raises(OSError, match="share went away"):
        list(ordered(workers, lambda i: i, items(), ahead=4, timeout_s=5, on_timeout=None))
    workers.close()


def test_a_consumer_that_stops_early_cancels_what_was_queued():
    workers = Workers(1, "test")
    done = []

    def work(item: int) -> int:
        time.sleep(0.01)
        done.append(item)
        return item

    stream = ordered(workers, work, range(1000), ahead=5, timeout_s=5, on_timeout=None)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    time.sleep(0.2)
    workers.close()
    assert len(done) <= 3 + 5 + 1  # what was in flight, not the other thousand


def test_calls_in_a_worker_thread_return_their_result_and_raise_their_error():
    workers = Workers(1, "model")
    assert workers.call(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(ZeroDivisionError):
        workers.call(lambda: 1 / 0)
    workers.close()
