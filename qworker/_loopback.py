"""Loopback only: free ports on 127.0.0.1, and what a process and its children listen on.

The servers and workers we start (`qworker._process.ManagedProcess`) must listen on loopback only:
`check_loopback_only()` reads ``/proc`` (as ``ss -ltnp`` does, without the tool or text meant for
people) for the TCP sockets a process and its descendants listen on, and refuses any address
beyond loopback. Stdlib only, Linux only, like `qworker._process`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import struct
from pathlib import Path
from typing import Final

from qworker._process import ProcessError, read_text

__all__ = ["HOST", "check_loopback_only", "free_port", "listening_addresses"]

HOST: Final = "127.0.0.1"
_TCP_LISTEN: Final = "0A"  # socket state in /proc/net/tcp (include/net/tcp_states.h)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def check_loopback_only(pid: int) -> None:
    """Fail if `pid` or a descendant listens on anything but a loopback address.

    Raises:
        ProcessError: Naming the offending addresses, or saying it listens on nothing.
    """
    listening = listening_addresses(pid)
    exposed = sorted(
        address for address in listening if not ipaddress.ip_address(address).is_loopback
    )
    if exposed:
        raise ProcessError(f"pid {pid} listens beyond loopback on {exposed}: refusing to run")
    if not listening:
        raise ProcessError(f"pid {pid} listens on no TCP socket")


def listening_addresses(pid: int) -> dict[str, set[int]]:
    """Map each address that `pid` and its descendants listen on (TCP) to its ports.

    Reads ``/proc``, as ``ss -ltnp`` does, so it needs no tool and parses no text meant for people.
    """
    pids = _descendants(pid) | {pid}
    inodes: set[str] = set()
    for member in pids:
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{member}/fd"):
                with contextlib.suppress(OSError):
                    target = str(Path(fd.path).readlink())
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    found: dict[str, set[int]] = {}
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        lines = (read_text(Path(f"/proc/{pid}/net/{table}")) or "").splitlines()[1:]
        for fields in (line.split() for line in lines):
            if fields[3] == _TCP_LISTEN and fields[9] in inodes:
                address, port = fields[1].split(":")
                found.setdefault(_decode_address(address, family), set()).add(int(port, 16))
    return found


def _decode_address(hex_address: str, family: int) -> str:
    # /proc/net/tcp prints each 32-bit word of the address in the host's byte order.
    words = (int(hex_address[i : i + 8], 16) for i in range(0, len(hex_address), 8))
    return socket.inet_ntop(family, b"".join(struct.pack("=I", word) for word in words))


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        stat = read_text(entry / "stat") if entry.name.isdigit() else None
        if stat:
            ppid = int(stat.rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found
