"""Polling for a condition in the tests, bounded in time."""

import time


def wait_for(predicate, timeout=5.0, what="condition", interval=0.02):
    """Call `predicate` until it returns something true, and return that; fail the test
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
