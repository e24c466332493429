"""A TVM RPC tracker and server on this machine (loopback): the RPC path end to end without a board.

Used by the tests and handy for trying a profile's RPC path before a board is at hand::

    with loopback_tracker("my-board") as (host, port):
        profile = profile_from_dict({..., "device": "rpc", "rpc": {"tracker_host": host,
                                     "tracker_port": port, "key": "my-board"}})

The tracker runs on a thread of this process (it only routes requests); the server is a separate
process that forks one child per session, like a board's ``python -m tvm.exec.rpc_server``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from mpsearch.errors import HardwareError

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextmanager
def loopback_tracker(key: str, servers: int = 1, timeout_s: float = 30.0) -> Iterator[tuple[str, int]]:
    """Start a tracker and ``servers`` RPC servers registered under ``key``; yield the tracker address."""
    from tvm import rpc

    tracker = _ThreadTracker()
    started = []
    try:
        for _ in range(servers):
            sport = free_port()
            started.append(rpc.Server(HOST, port=sport, port_end=sport + 100, key=key,
                                      tracker_addr=(HOST, tracker.port), silent=True))
        deadline = time.monotonic() + timeout_s
        client = rpc.connect_tracker(HOST, tracker.port)
        while client.summary().get("queue_info", {}).get(key, {}).get("free", 0) < servers:
            if time.monotonic() > deadline:
                raise HardwareError(f"loopback RPC server with key {key!r} did not register with the tracker "
                                    f"at {HOST}:{tracker.port} within {timeout_s:.0f} s")
            time.sleep(0.1)
        yield HOST, tracker.port
    finally:
        for server in started:
            server.terminate()
        tracker.stop()


class _ThreadTracker:
    """TVM's tracker on a thread here: saves the ~10 s a separate process spends importing TVM."""

    def __init__(self) -> None:
        from tvm.rpc.tracker import PopenTrackerServerState

        port = free_port()
        self.state = PopenTrackerServerState(HOST, port=port, port_end=port + 100, silent=True)
        self.port = int(self.state.port)

    def stop(self) -> None:
        import struct

        from tvm.rpc import base

        with socket.create_connection((HOST, self.port), timeout=10) as sock:
            sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            base.recvall(sock, 4)
            base.sendjson(sock, [base.TrackerCode.STOP, self.state.stop_key])
            base.recvjson(sock)
        self.state.thread.join(timeout=10)
