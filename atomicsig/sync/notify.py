"""systemd ``sd_notify`` without libsystemd: one datagram per state change to ``$NOTIFY_SOCKET``.

Used by ``atomicsig-sync.service`` (``Type=notify``): READY=1 after config and keys load, WATCHDOG=1 keep-alives
while every source is handled (daemon.py: idle, backing off, or progressing), STOPPING=1 on SIGTERM. Outside
systemd (no ``$NOTIFY_SOCKET``) it does nothing.
"""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send ``message`` (e.g. ``"READY=1"``); False when not under systemd or the socket is gone."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):  # abstract namespace
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode())
        return True
    except OSError:
        return False


def watchdog_interval() -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds (systemd's advice), if the watchdog is meant for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
