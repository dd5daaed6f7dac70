"""What `procsup` prints for people: status tables, outcomes, plans, log lines (layer 4).

Pure formatting of the daemon's replies (dicts as they came off the wire, read defensively:
a field of the wrong type reads as absent), for `cli`. Imports only layer 0, and `units`
only where a signal is named.
"""

from __future__ import annotations

TYPE_CHECKING = False  # mypy treats this name as true; `typing` is not imported at run time
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from typing import Any


def format_duration(seconds: float | None) -> str:
    """Uptime for people: "12s", "5m3s", "2h4m", "3d2h"; "-" for None."""
    if seconds is None:
        return "-"
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def format_size(n: int | None) -> str:
    """Memory for people: "512B", "1.5K", "24.0M", "2.0G"; "-" for None."""
    if n is None:
        return "-"
    if n < 1024:
        return f"{n}B"
    value = float(n)
    for unit in ("K", "M", "G", "T"):
        value /= 1024
        if value < 1024 or unit == "T":
            break
    return f"{value:.1f}{unit}"


def format_cpu(percent: float | None) -> str:
    """CPU for people: "0.3%"; "-" for None."""
    return "-" if percent is None else f"{percent:.1f}%"


def format_exit(exit_code: int | None) -> str:
    """"exit 1" for a code, the signal name for -N (killed by signal N), "-" for None."""
    if exit_code is None:
        return "-"
    if exit_code < 0:
        from procsup.units import signal_name

        return signal_name(-exit_code)
    return f"exit {exit_code}"


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    table = [list(headers), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(headers) - 1)]
    lines = []
    for row in table:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)] + row[-1:]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


STATUS_HEADERS = ("APP", "ID", "PID", "STATE", "UPTIME", "RESTARTS", "CPU", "MEM",
                  "LAST EXIT/REASON")
#: The health column, after STATE, when some instance shown has a health check.
HEALTH_HEADER = "HEALTH"


def format_status(result: object, *, filtered: bool = False) -> str:
    """The `status` table, preceded by a line when the config on disk is not applied and
    followed by one per log file that refuses writes now."""
    res = as_dict(result)
    out = []
    config = as_dict(res.get("config"))
    if config.get("applied") is False:
        error = config.get("error")
        if isinstance(error, dict):
            error = error.get("text") or error.get("message")
        path = config.get("path") or "the config"
        out.append(f"config {path} is not applied: {error}\n" if error else
                   f"config {path} is not applied\n")
    instances = [as_dict(i) for i in as_list(res.get("instances"))]
    if not instances:
        out.append("no matching instances\n" if filtered else "no apps configured\n")
        return "".join(out)
    rows = []
    checked = any(isinstance(inst.get("health"), str) for inst in instances)
    for inst in instances:
        health = (_text(inst.get("health")),) if checked else ()
        rows.append((
            str(inst.get("app", "?")),
            _text(inst.get("instance")),
            _text(inst.get("pid")),
            str(inst.get("state", "?")),
            *health,
            format_duration(_num(inst.get("uptime"))),
            _text(inst.get("restarts")),
            format_cpu(_num(inst.get("cpu"))),
            format_size(_int(inst.get("memory"))),
            _last_column(inst),
        ))
    headers: tuple[str, ...] = STATUS_HEADERS
    if checked:
        headers = (*STATUS_HEADERS[:4], HEALTH_HEADER, *STATUS_HEADERS[4:])
    out.append(format_table(headers, rows))
    out.extend(_log_errors(instances))
    out.extend(f"{_instance_name(i)}: warning: {i['warning']}\n" for i in instances
               if i.get("warning"))
    return "".join(out)


def _log_errors(instances: list[dict[str, Any]]) -> list[str]:
    """`web:0: log file /var/log/web-out.log: cannot write: No space left on device (since
    ...; 3555 lines, 347.2K dropped)`, once per file and error (a file shared by instances
    names them all). A file that writes again is left out: `--json` keeps its counts."""
    seen: dict[tuple[object, ...], list[str]] = {}
    for inst in instances:
        for entry in (as_dict(e) for e in as_list(inst.get("log_errors"))):
            if entry.get("error"):
                key = tuple(entry.get(k) for k in ("path", "error", "since", "dropped_lines",
                                                   "dropped_bytes"))
                seen.setdefault(key, []).append(_instance_name(inst))
    lines = []
    for (path, error, since, n, size), names in seen.items():
        # not a file: procsupd's "stdout"/"stderr" ("-"), "the journal"
        where = f"log file {path}" if str(path).startswith("/") else f"logging to {path}"
        lines.append(f"{', '.join(names)}: {where}: {error} (since {since}; "
                     f"{_text(_int(n))} lines, {format_size(_int(size))} dropped)\n")
    return lines


def format_outcome(result: object) -> str:
    """One line per instance of a start/stop/restart/reload/scale result:
    `web:0  running  pid 4242` or `web:1  errored  executable not found: foo`."""
    rows = []
    for inst in (as_dict(i) for i in as_list(as_dict(result).get("instances"))):
        detail = []
        if inst.get("pid") is not None:
            detail.append(f"pid {inst['pid']}")
        if inst.get("reason"):
            detail.append(str(inst["reason"]))
        rows.append((_instance_name(inst), str(inst.get("state", "?")), "  ".join(detail)))
    if not rows:
        return "no instances\n"
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    text = "".join(
        f"{r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2]}".rstrip() + "\n" for r in rows
    )
    dependents = [str(d) for d in as_list(as_dict(result).get("dependents"))]
    if dependents:  # a stop of an app that others depend on: they keep running
        text += (f"still running, and depending on what was stopped: "
                 f"{', '.join(dependents)}\n")
    return text


def format_toggled(result: object) -> str:
    """`disable`/`enable`: a line per app (`web disabled: stays stopped until procsup enable
    web`), then the instances as `format_outcome` prints them."""
    res = as_dict(result)
    out = []
    for entry in (as_dict(a) for a in as_list(res.get("apps"))):
        app, changed = entry.get("app", "?"), entry.get("changed") is True
        if entry.get("disabled") is True:
            out.append(f"{app} disabled: stays stopped until `procsup enable {app}`\n"
                       if changed else f"{app} was disabled already\n")
        elif not changed:
            out.append(f"{app} is not disabled: nothing changed\n")
        elif entry.get("configured") is False:
            out.append(f"{app} enabled (the config has no app {app}: only its record "
                       "went)\n")
        else:
            out.append(f"{app} enabled\n")
    if as_list(res.get("instances")):
        out.append(format_outcome(res))
    return "".join(out)


def format_signalled(result: object, signame: str) -> str:
    """`sent SIGUSR2 to web:0 (pid 4242)` per instance, or a line saying nothing was sent."""
    done = [as_dict(i) for i in as_list(as_dict(result).get("signalled"))]
    if not done:
        return f"{signame} was not sent: no selected instance is running\n"
    return "".join(f"sent {signame} to {_instance_name(i)} (pid {i.get('pid')})\n" for i in done)


def format_plan(result: object) -> str:
    """A `reread`/`update` plan: `restart  web (0, 1): command changed`, one action a line."""
    res = as_dict(result)
    out = []
    for action in (as_dict(a) for a in as_list(res.get("actions"))):
        ids = ", ".join(str(i) for i in as_list(action.get("instances")))
        line = f"{action.get('action', '?'):<8} {action.get('app', '?')}"
        if ids:
            line += f" ({ids})"
        if action.get("reason"):
            line += f": {action['reason']}"
        out.append(line + "\n")
    held = [str(a) for a in as_list(res.get("disabled"))]
    for live in (as_dict(x) for x in as_list(res.get("live"))):
        changed = ", ".join(str(k) for k in as_list(live.get("keys")))
        how = "disabled: nothing starts" if live.get("app") in held else "live, no restart"
        out.append(f"{'update':<8} {live.get('app', '?')}: {changed} changed ({how})\n")
    updated = {as_dict(x).get("app") for x in as_list(res.get("live"))}
    out += [f"{'disabled':<8} {app}: nothing starts (`procsup enable {app}` starts it)\n"
            for app in held if app not in updated]
    if not out:
        out.append("no changes\n")
    keys = [str(k) for k in as_list(res.get("restart_daemon"))]
    if keys:
        out.append(f"takes effect when procsupd restarts: {', '.join(keys)}\n")
    return "".join(out)


class LogPrinter:
    """Prints `logs` frames: plain text when every line comes from one file, else each line as
    `app:i | text` (`app | text` for a file shared by all instances), and `app:i err | text`
    for a stderr line when both streams are shown (they come one file after the other, so the
    label is what tells them apart).

    Without follow the whole reply is known, so the choice is exact. With follow the first
    frame (the last N lines) decides, and a line from a second file switches to prefixes.
    """

    def __init__(self, write: Callable[[str], object]) -> None:
        self._write = write
        self._sources: set[tuple[object, object, object]] = set()

    def feed(self, frame: object) -> None:
        lines = [as_dict(line) for line in as_list(as_dict(frame).get("lines"))]
        self._sources.update((ln.get("app"), ln.get("instance"), ln.get("stream")) for ln in lines)
        prefixed = len(self._sources) > 1
        both = len({source[2] for source in self._sources}) > 1
        for ln in lines:
            text = str(ln.get("text", ""))
            if prefixed:
                inst = ln.get("instance")
                name = f"{ln.get('app')}:{inst}" if inst is not None else str(ln.get("app"))
                label = " err" if both and ln.get("stream") == "err" else ""
                self._write(f"{name}{label} | {text}\n")
            else:
                self._write(text + "\n")


_STREAM_NAMES = {"out": "stdout", "err": "stderr", "both": "stdout and stderr"}
_KEYS = {"out": "out_file", "err": "error_file", "both": "out_file and error_file"}
_STDIO_NAMES = {"out": "standard output", "err": "standard error"}


def format_elsewhere(entry: object, *, lines: int, follow: bool) -> str:
    """One line for stderr about streams `procsup logs` cannot read (an `elsewhere` entry of
    the `logs` reply): where they go and how to read them there. `lines` and `follow` are
    the user's `-n` and `-f`, carried over into the command it suggests."""
    e = as_dict(entry)
    app = str(e.get("app", "?"))
    stream = str(e.get("stream", "out"))
    target = e.get("target")
    who = f"{_instances(app, as_list(e.get('instances')))} {_STREAM_NAMES.get(stream, stream)}"
    key = _KEYS.get(stream, stream)
    if target is None:
        verb = "are" if stream == "both" else "is"
        return f"{who} {verb} discarded ({key} = false): there is nothing to show"
    verb = "go" if stream == "both" else "goes"
    if target == "journal":
        import shlex

        words = ["journalctl", "-n", str(lines)] + (["-f"] if follow else [])
        words.append(f"PROCSUP_APP={app}")
        if stream != "both":
            words.append(f"PROCSUP_STREAM={stream}")
        return (f"{who} {verb} to the systemd journal ({key} = \"journal\"), not to a file: "
                f"{shlex.join(words)}")
    place = as_dict(e.get("place"))
    kind = place.get("kind")
    head = (f"{who} goes to procsupd's {_STDIO_NAMES.get(stream, stream)} "
            f"({key} = \"-\")")
    if e.get("json") is True:
        mark = f'its lines are JSON objects with "app": "{app}"'
    else:
        mark = f'its lines start with "{app}:<instance> | " (after the date, if any)'
    if kind == "file":
        return f"{head}, the file {place.get('path')}, where {mark}"
    if kind == "null":
        return (f"{head}: procsupd runs daemonized and that is /dev/null, so these lines are "
                "lost; run procsupd -n (or use a file or \"journal\")")
    if kind == "journal":
        unit = place.get("unit")
        where = f"journalctl -u {unit}" if unit else "journalctl (procsupd's own unit)"
        return f"{head}: it goes to the journal with procsupd's own log, where {mark}: {where}"
    if kind == "terminal":
        return f"{head}: it is the terminal procsupd runs in ({place.get('path')})"
    if kind == "closed":
        return f"{head}: procsupd's {_STDIO_NAMES.get(stream, stream)} is closed"
    return (f"{head}: read it where procsupd's output goes (docker logs, kubectl logs, "
            f"journalctl -u procsup), where {mark}")


def _instances(app: str, indices: list[Any]) -> str:
    """`web:0`, `web:0-3` (a run of instances), `web:0,2`; `web` with none."""
    nums = sorted(i for i in indices if isinstance(i, int) and not isinstance(i, bool))
    if not nums:
        return app
    if len(nums) > 2 and nums == list(range(nums[0], nums[-1] + 1)):
        return f"{app}:{nums[0]}-{nums[-1]}"
    return f"{app}:{','.join(map(str, nums))}"


def as_dict(value: object) -> dict[str, Any]:
    """`value` if it is a JSON object, else {} (a reply from a newer daemon reads as empty)."""
    return value if isinstance(value, dict) else {}


def as_list(value: object) -> list[Any]:
    """`value` if it is a JSON array, else []."""
    return value if isinstance(value, list) else []


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: object) -> str:
    return "-" if value is None else str(value)


#: The longest `STATUS=` text the table shows whole; a longer one ends in "..." (`--json`
#: has all of it).
STATUS_WIDTH = 60


def _last_column(inst: dict[str, Any]) -> str:
    """The reason (first that the app is disabled, if it is), else the last exit; then the
    `STATUS=` text the run sent, quoted (the app's own words): `"serving 12 clients"`,
    `exit 1; "warming cache"`."""
    reason = inst.get("reason")
    if inst.get("disabled") is True:
        app = inst.get("app", "?")
        hint = f"disabled: `procsup enable {app}` starts it"
        reason = f"{hint}; {reason}" if reason else hint
    cell = str(reason) if reason else _last_exit(inst)
    status = inst.get("status")
    if not isinstance(status, str) or not status:
        return cell
    import json

    if len(status) > STATUS_WIDTH:
        status = status[: STATUS_WIDTH - 3] + "..."
    said = json.dumps(status, ensure_ascii=False)  # quotes, and control characters escaped
    return said if cell == "-" else f"{cell}; {said}"


def _last_exit(inst: dict[str, Any]) -> str:
    """The last exit, except on a healthy row whose last exit was a requested stop."""
    if inst.get("state") in ("running", "starting") and not inst.get("restarts"):
        return "-"
    return format_exit(_int(inst.get("exit_code")))


def _instance_name(inst: dict[str, Any]) -> str:
    i = inst.get("instance")
    return f"{inst.get('app', '?')}:{i}" if i is not None else str(inst.get("app", "?"))
