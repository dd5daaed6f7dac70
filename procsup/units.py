"""Parse and format the units of the config file (layer 0: imports nothing from procsup).

Every parser takes the raw value as it came out of TOML (`object`), returns the model's unit
(float seconds, int bytes, int signal number, int mode) and raises `ValueError` with a message
that can be shown to the user as is (it names what was expected). `bool` is never accepted where
an integer is: TOML `true` is not the number 1.

Every formatter returns a string its parser reads back to the same value, so `dump` can use them.
"""

from __future__ import annotations

import decimal
import math
import re
import signal

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

# Optional K/M/G (powers of 1024) then an optional B; case-insensitive ("50M", "50mb", "512").
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMG])?B?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}

_MODE_RE = re.compile(r"^(?:0o)?([0-7]{1,4})$", re.IGNORECASE)

#: Escapes known inside "..." values of env files (and of the lenient socket scan of `paths`).
DQ_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


def parse_duration(value: object) -> float:
    """A duration in seconds: an int is milliseconds (as in PM2); a str needs a unit ms|s|m|h.

    "1.5s" -> 1.5, "100ms" -> 0.1, "2m" -> 120.0, "1h" -> 3600.0, 250 -> 0.25.
    Negative values are rejected.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value}")
        return value / 1000
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m is None:
            raise ValueError(
                f"invalid duration {value!r}: expected a number with a unit ms, s, m or h "
                '(e.g. "100ms", "1.5s", "2m"), or an integer number of milliseconds'
            )
        number, unit = m.groups()
        if unit == "ms":
            # Divide rather than multiply by 0.001 so "100ms" == 0.1 exactly as 100 / 1000 is.
            return float(number) / 1000
        return float(number) * _DURATION_UNITS[unit]
    raise ValueError(
        f"invalid duration {value!r}: expected a string with a unit (e.g. \"1.5s\") "
        "or an integer number of milliseconds"
    )


def format_duration(seconds: float) -> str:
    """The shortest of "Nh", "Nm", "Ns", "Nms" that is exact, else "<float>s".

    `parse_duration(format_duration(x)) == x` for every finite x >= 0.
    """
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format duration {seconds!r}")
    if seconds == 0:
        return "0s"
    for unit, factor in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        count = seconds / factor
        if count == int(count) and int(count) * factor == seconds:
            return f"{int(count)}{unit}"
    if seconds < 1:
        millis = round(seconds * 1000)
        if millis / 1000 == seconds:
            return f"{millis}ms"
    # repr() is the shortest text that reads back to the same float; Decimal spells it out
    # without an exponent, which the duration syntax does not have.
    return f"{decimal.Decimal(repr(seconds)):f}s"


def parse_size(value: object) -> int:
    """A size in bytes: an int is bytes; a str is a number with an optional K, M or G (powers of
    1024) and an optional B, case-insensitive: "50M", "512", "1.5G", "64kb". Negative is rejected.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m is None:
            raise ValueError(
                f"invalid size {value!r}: expected bytes, or a number with K, M or G "
                '(powers of 1024), e.g. "512K", "50M", "1G"'
            )
        number, unit = m.groups()
        return int(float(number) * _SIZE_UNITS[(unit or "").upper()])
    raise ValueError(
        f'invalid size {value!r}: expected an integer number of bytes or a string like "50M"'
    )


def format_size(n: int) -> str:
    """A size for people and for `dump`: "50M", "512K", "3G", "100B".

    Uses the largest unit not above `n`, with one decimal when it is not a whole multiple
    ("1.5K", "23.4M"). `parse_size` reads it back to `n` whenever `n` is a whole multiple of
    that unit; otherwise it is for display (`dump` should then write the integer).
    """
    if n < 0:
        raise ValueError(f"cannot format size {n!r}")
    for unit in ("G", "M", "K"):
        factor = _SIZE_UNITS[unit]
        if n >= factor:
            if n % factor == 0:
                return f"{n // factor}{unit}"
            return f"{n / factor:.1f}{unit}"
    return f"{n}B"


def parse_signal(value: object) -> int:
    """A signal number from "SIGTERM", "TERM", "term", 15 or "15"."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value)
    if number is not None:
        if number not in signal.valid_signals() or number == 0:
            raise ValueError(f"invalid signal number {number}")
        return number
    if isinstance(value, str):
        name = value.strip().upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        # SIG_DFL, SIG_IGN, SIG_BLOCK... are members of other enums, not signals.
        if name.startswith("SIG_") or name not in signal.Signals.__members__:
            raise ValueError(
                f'unknown signal {value!r}: expected a name like "SIGTERM" or "TERM", or a number'
            )
        return int(signal.Signals[name])
    raise ValueError(f'invalid signal {value!r}: expected a name like "SIGTERM" or a number')


def signal_name(signum: int) -> str:
    """"SIGTERM" for 15; the number as a string for signals without a name (real-time ones)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def exit_text(code: int | None, sig: int | None) -> str:
    """How a process ended, in the one wording of status, logs and replies: "exited with code
    1", "killed by SIGTERM", "killed by signal 200" (no name), "exited (status unknown)" (an
    adopted process, whose status cannot be reaped)."""
    if sig is not None:
        name = signal_name(sig)
        return f"killed by {name if name.startswith('SIG') else f'signal {sig}'}"
    if code is not None:
        return f"exited with code {code}"
    return "exited (status unknown)"


def exit_code_text(exit_code: int) -> str:
    """`exit_text` of an instance's recorded `exit_code`: the code, or -N when killed by N."""
    return exit_text(None, -exit_code) if exit_code < 0 else exit_text(exit_code, None)


def parse_mode(value: object) -> int:
    """A permission mode or umask from an octal string: "0660", "022", "660", "0o660".

    Integers are refused: TOML `660` is decimal and `0o660` cannot be told apart from 432, so
    the mode must be written as a string.
    """
    if isinstance(value, str):
        m = _MODE_RE.match(value.strip())
        if m is not None:
            return int(m.group(1), 8)
        raise ValueError(f'invalid mode {value!r}: expected octal digits, e.g. "0660" or "022"')
    raise ValueError(
        f'invalid mode {value!r}: expected an octal string, e.g. "0660" (write it in quotes)'
    )


def format_mode(mode: int) -> str:
    """"0660" for 0o660: four octal digits, read back by `parse_mode`."""
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"cannot format mode {mode!r}")
    return f"{mode:04o}"


def split_unix_listen(address: str) -> tuple[str, int | None]:
    """A `listen` address "unix:PATH" or "unix:PATH?mode=0600" -> (PATH, mode or None).

    The mode is the socket file's permission bits (octal, as `socket_mode`). ValueError for a
    malformed address."""
    if not address.startswith("unix:"):
        raise ValueError(f"not a unix listen address: {address!r}")
    path, sep, query = address[len("unix:") :].partition("?")
    if not path or "\0" in path or path.endswith("/"):
        raise ValueError(f"invalid listen address {address!r}: expected unix:/path/to/sock")
    if not sep:
        return path, None
    key, eq, value = query.partition("=")
    if key != "mode" or not eq:
        raise ValueError(f"invalid listen address {address!r}: the only option is ?mode=0660")
    return path, parse_mode(value)
