"""Waiting on a page expression under the pages' Content-Security-Policy.

Playwright's `wait_for_function` passes when its first check is true, and otherwise polls with an
eval inside the page, which the CSP (no 'unsafe-eval') forbids: a wait that passes on a fast
machine fails on a loaded one. This polls from the test instead.
"""

from __future__ import annotations

import time


def wait_until(page, js: str, timeout_ms: int = 20_000, what: str = "") -> None:
    deadline = time.monotonic() + timeout_ms / 1000
    while time.monotonic() < deadline:
        if page.evaluate(js):
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"timed out after {timeout_ms} ms waiting for {what or js}")
