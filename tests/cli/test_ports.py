"""Free ports for the tests' and benchmarks' stacks: several at once must be distinct and free, since
`up` refuses two settings on one port (a CI run failed that way when free_port() was called in a row
and the kernel handed the same port back)."""

from __future__ import annotations

import socket

from moodtunes_cli.localstack import HOST, free_port_run, free_ports


def bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def test_free_ports_are_distinct_and_free():
    ports = free_ports(40)
    assert len(set(ports)) == 40
    assert all(bindable(p) for p in ports)


def test_free_ports_avoid_what_they_are_told(monkeypatch):
    """The kernel's first answers are in AVOID: they are skipped, not returned."""
    first_two = free_ports(2)
    answers = iter([first_two[0], first_two[1]])
    real_bind = socket.socket.bind

    def bind_first_answers_then_any(self, address):
        port = next(answers, 0) if address == (HOST, 0) else address[1]
        return real_bind(self, (HOST, port))

    monkeypatch.setattr(socket.socket, "bind", bind_first_answers_then_any)
    ports = free_ports(3, avoid=first_two)
    assert len(set(ports)) == 3 and not set(ports) & set(first_two)


def test_a_port_run_is_consecutive_free_and_clear_of_avoided_ports():
    avoid = free_ports(5)
    first = free_port_run(3, avoid=avoid)
    run = range(first, first + 3)
    assert set(run).isdisjoint(avoid)
    assert all(bindable(p) for p in run)


def test_a_port_run_skips_a_start_whose_next_port_is_taken(monkeypatch):
    """A candidate whose next port is held is passed over for one whose whole run is free."""
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        taken = holder.getsockname()[1]
        candidates = iter([taken - 1])
        from moodtunes_cli import localstack

        real_free_port = localstack.free_port
        monkeypatch.setattr(localstack, "free_port", lambda: next(candidates, None) or real_free_port())
        first = free_port_run(2)
        assert first != taken - 1
        assert taken not in (first, first + 1)
