"""Give up root for good once the daemon holds what only root could get (issue #7 item 6).

``atomicsig serve`` and ``atomicsig sync`` may be started as root — to bind a port below 1024, to read a TLS key
or token that only root can read — and then have no use for root at all. Running on as root would turn any bug
in request handling into a root compromise, so the daemons call :func:`drop_privileges` right after the socket
is bound and those files are read. The order is the one setuid(2) demands: supplementary groups first, then the
gid, then the uid (after setuid a process can no longer change its groups). Afterwards we check that root cannot
be regained; if it could, or if any step fails, we raise rather than keep serving as root.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from atomicsig.errors import InputError


class PrivilegeError(InputError):
    """``--user`` was given but the process could not become that user; refusing to run as root."""


@dataclass(frozen=True)
class Dropped:
    """Who we are after :func:`drop_privileges` (for the start-up message)."""

    user: str
    uid: int
    gid: int
    changed: bool  # False when we were not root, so nothing was done


def _resolve(user: str, group: str | None) -> tuple[int, int, str]:
    try:
        pw = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
    except KeyError:
        raise PrivilegeError(f"--user {user}: no such user") from None
    gid = pw.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid if not group.isdigit() else grp.getgrgid(int(group)).gr_gid
        except KeyError:
            raise PrivilegeError(f"--group {group}: no such group") from None
    if pw.pw_uid == 0 or gid == 0:
        raise PrivilegeError(f"--user {user}: refusing to 'drop' to uid/gid 0")
    return pw.pw_uid, gid, pw.pw_name


def check_user(user: str, group: str | None = None) -> None:
    """Raise :class:`PrivilegeError` now if :func:`drop_privileges` would fail for a reason known in advance (no
    such user or group, uid/gid 0, not root and not already that user), so a daemon refuses before it binds,
    announces or serves anything (issue 11 #4: ``serve --user nobody-such`` printed its banner first)."""
    uid, _, _ = _resolve(user, group)
    if os.geteuid() != 0 and os.geteuid() != uid:
        raise PrivilegeError(f"--user {user}: only root can switch users (running as uid {os.geteuid()})")


def drop_privileges(user: str, group: str | None = None) -> Dropped:
    """Become ``user`` (and ``group``, default the user's primary group) if running as root.

    Supplementary groups are cleared, not set from /etc/group: the daemon needs only its own uid and gid, and a
    group membership added to the account later must not silently widen what a running daemon can reach.
    Not root: nothing to drop; if we already are that user this is fine, otherwise it is an error (the caller
    asked for an identity we cannot assume).
    """
    uid, gid, name = _resolve(user, group)
    if os.geteuid() != 0:
        if os.geteuid() == uid:
            return Dropped(name, uid, os.getegid(), changed=False)
        raise PrivilegeError(f"--user {user}: only root can switch users (running as uid {os.geteuid()})")
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise PrivilegeError(f"cannot switch to user {name}: {exc.strerror or exc}; refusing to run as root") \
            from exc
    _assert_no_way_back(uid, gid)
    # HOME would still point at /root; gpg and friends must not try to use root's files.
    os.environ["HOME"] = pwd.getpwuid(uid).pw_dir or "/"
    os.environ["USER"] = os.environ["LOGNAME"] = name
    return Dropped(name, uid, gid, changed=True)


def _assert_no_way_back(uid: int, gid: int) -> None:
    """All of real/effective/saved ids are the new ones, no groups remain, and setuid(0) fails."""
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or \
            any(g != gid for g in os.getgroups()):
        raise PrivilegeError("privilege drop incomplete (ids still include root); refusing to run")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PrivilegeError("could regain root after dropping privileges; refusing to run")
