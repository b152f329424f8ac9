"""One way to write a duration, in every config file and option (docs/sync.md "Durations").

Grammar: a number followed by a unit, ``30s``, ``1.5s``, ``10min``, ``2h``, ``1d``, ``2w``, ``6m``, ``2y``:

=====  ==================  ===================================================================
unit   meaning             why
=====  ==================  ===================================================================
s      seconds
min    minutes             not ``m``: see below
h      hours
d      days
w      weeks (7 d)
m      months (30 d)       what gpg's expiry strings and the signers file's ``expire: 6m`` mean
y      years (365 d)       gpg's meaning too
=====  ==================  ===================================================================

``m`` keeps gpg's meaning (months) so that no existing signers file changes meaning; minutes are written
``min``. A number without a unit keeps the meaning its field always had (sync's ``interval: 30`` is seconds,
the signers file's ``expire: 365`` is days, as gpg reads it), so old files load unchanged; new files should
always write the unit. Pure: no I/O.
"""

from __future__ import annotations

import re

from atomicsig.errors import InputError

UNITS: dict[str, int] = {"s": 1, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "m": 30 * 86400,
                         "y": 365 * 86400}
_DURATION = re.compile(r"([0-9]{1,12}(?:\.[0-9]{1,9})?)(s|min|h|d|w|m|y)?")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
#: How gpg itself spells a relative expiry (``--quick-gen-key``/``--quick-set-expire``): passed through as is.
_GPG_NATIVE = re.compile(r"[1-9][0-9]*[dwmy]?")


def parse_duration(text: str | int | float, what: str = "duration", *, bare_unit: str = "s",
                   minimum: float | None = None, maximum: float | None = None) -> float:
    """Seconds for ``text`` (e.g. ``"5min"`` → 300.0); a bare number is in ``bare_unit``. InputError otherwise.

    ``minimum``/``maximum`` (seconds) bound the result; the message then says the bound in the same grammar,
    and hints at ``min`` when ``m`` (months) was probably meant as minutes.
    """
    if isinstance(text, bool):
        raise InputError(f"{what} must be a duration such as 30s, 5min, 2h, 1d, not {text!r}")
    raw = str(text).strip()
    m = _DURATION.fullmatch(raw)
    if not m:
        raise InputError(f"{what} {raw!r} is not a duration: write a number and a unit, e.g. 30s, 5min, 2h, 1d, "
                         "2w, 6m (months), 1y")
    seconds = float(m.group(1)) * UNITS[m.group(2) or bare_unit]
    if (minimum is not None and seconds < minimum) or (maximum is not None and seconds > maximum):
        hint = " ('m' is months; minutes are 'min')" if m.group(2) == "m" else ""
        low = "" if minimum is None else format_duration(minimum)
        high = "" if maximum is None else format_duration(maximum)
        raise InputError(f"{what} {raw!r} must be between {low or '0'} and {high or 'any'}{hint}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling in the grammar above (``300`` → ``5min``, ``0.05`` → ``0.05s``)."""
    for unit in ("y", "w", "d", "h", "min"):
        n = seconds / UNITS[unit]
        if n >= 1 and n == int(n):
            return f"{int(n)}{unit}"
    return f"{seconds:g}s"


def gpg_expire(text: str | int, what: str = "expire", *, allow_never: bool = True) -> str:
    """A key expiry in the shared grammar → the string gpg takes (``0``, ``Nd``/``Nw``/``Nm``/``Ny``, an ISO date,
    or ``seconds=N`` for s/min/h). ``0`` and ``never`` mean no expiry (only with ``allow_never``)."""
    raw = str(text).strip()
    if raw in ("0", "never"):
        if not allow_never:
            raise InputError(f"{what} {raw!r} must be a duration other than 0")
        return "0"
    if _ISO_DATE.fullmatch(raw):
        return raw
    seconds = parse_duration(raw, what, bare_unit="d", minimum=1)
    if _GPG_NATIVE.fullmatch(raw):
        return raw
    return f"seconds={round(seconds)}"


__all__ = ["UNITS", "format_duration", "gpg_expire", "parse_duration"]
