"""`procsup`: the control CLI (layer 5). Every line procsup prints for people is formatted in
`output`.

`procsup [-c CONFIG] [-s SOCKET] COMMAND ...` (CONTRACT.md §1). Exit codes: 0 success, 1 the
request failed, 2 usage error, 3 the daemon cannot be reached (the message names the socket).

Start-up time matters (`procsup status` in scripts and prompts): this module imports only the
client, the protocol, `output` and `errors` at start; `paths` (socket discovery, only without
`-s`) and `units` (signal names) are imported where needed, and so are `importers` (`procsup
import`, which needs no daemon). Never asyncio, psutil or daemon machinery. argparse is made
to build only the sub-parser of the command being run, and to find the help width without
`shutil` (tests/unit/test_cli_imports.py guards all of it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from procsup import __version__, protocol
from procsup.client import Client, Unreachable
from procsup.errors import ExitCode, ProcsupError, ProtocolError, RemoteError
from procsup.output import (
    LogPrinter,
    as_dict,
    as_list,
    format_elsewhere,
    format_outcome,
    format_plan,
    format_signalled,
    format_status,
    format_toggled,
)

TYPE_CHECKING = False  # mypy treats this name as true; `typing` is not imported at run time
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

#: Seconds to wait for a reply that needs no waiting on processes.
QUICK_TIMEOUT = 30.0
_APPS_HELP = 'app name, "app:i" for one instance, or "all"'


class _UsageError(Exception):
    """Arguments argparse accepted but the command table refuses (exit 2)."""


class _NoSocket(ProcsupError):
    """The socket path cannot be determined (exit 3: the daemon cannot be reached)."""


# --------------------------------------------------------------------------- commands


class _Context:
    """What a command handler needs: the parsed arguments and a way to call the daemon."""

    def __init__(self, ns: argparse.Namespace) -> None:
        self.ns = ns

    def socket_path(self) -> str:
        ns = self.ns
        if ns.socket:
            return str(ns.socket)
        if ns.config and not os.path.exists(ns.config):
            # A mistyped -c would otherwise quietly fall back to the default socket.
            raise _NoSocket(f"config file {ns.config} not found (given with -c)")
        # Only now: reading the config file for its socket costs start-up time `-s` users skip.
        from procsup import paths

        try:
            return paths.find_socket(
                socket=None, config=ns.config, environ=os.environ, uid=os.getuid()
            )
        except (ProcsupError, OSError) as exc:
            raise _NoSocket(f"cannot determine the control socket: {exc}") from exc

    def client(self, cmd: str, args: dict[str, Any], timeout: float | None) -> Client:
        try:
            protocol.validate_args(cmd, args)
        except protocol.ProtocolViolation as exc:
            raise _UsageError(exc.message) from None
        return Client(self.socket_path(), timeout)

    def call(self, cmd: str, timeout: float | None = QUICK_TIMEOUT, **args: Any) -> dict[str, Any]:
        """The result of `cmd`; a non-object result (a newer daemon?) reads as an empty one."""
        return as_dict(self.client(cmd, args, timeout).call(cmd, **args))


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def cmd_status(ctx: _Context) -> int:
    res = ctx.call("status", apps=ctx.ns.apps)
    if ctx.ns.json:
        _out(json.dumps(res, sort_keys=False) + "\n")
    else:
        _out(format_status(res, filtered=bool(ctx.ns.apps)))
    return ExitCode.OK


def cmd_outcome(ctx: _Context) -> int:
    """start, stop, restart, reload: the instances, exit 1 when something asked for failed."""
    wait = not ctx.ns.no_wait
    cmd = ctx.ns.cmd
    res = ctx.call(cmd, None if wait else QUICK_TIMEOUT, apps=ctx.ns.apps, wait=wait)
    _out(format_outcome(res))
    for notice in as_list(res.get("notices")):  # reload: stop-then-start, or in place
        print(f"procsup: {notice}", file=sys.stderr)
    if res.get("error"):
        print(f"procsup: {res['error']}", file=sys.stderr)
    return ExitCode.FAILED if res.get("failed") else ExitCode.OK


def cmd_toggle(ctx: _Context) -> int:
    """disable, enable: a line per app, then the instances; exit 1 when one did not stop or
    start as asked."""
    wait = not ctx.ns.no_wait
    res = ctx.call(ctx.ns.cmd, None if wait else QUICK_TIMEOUT, apps=ctx.ns.apps, wait=wait)
    _out(format_toggled(res))
    return ExitCode.FAILED if res.get("failed") else ExitCode.OK


def cmd_scale(ctx: _Context) -> int:
    wait = not ctx.ns.no_wait
    res = ctx.call("scale", None if wait else QUICK_TIMEOUT, app=ctx.ns.app,
                   instances=ctx.ns.instances, wait=wait)
    _out(format_outcome(res))
    return ExitCode.FAILED if res.get("failed") else ExitCode.OK


def cmd_signal(ctx: _Context) -> int:
    from procsup.units import signal_name

    res = ctx.call("signal", signal=ctx.ns.sig, apps=ctx.ns.apps)
    _out(format_signalled(res, signal_name(ctx.ns.sig)))
    return ExitCode.FAILED if res.get("failed") else ExitCode.OK


def cmd_logs(ctx: _Context) -> int:
    ns = ctx.ns
    stream = "err" if ns.err else "out" if ns.out else "both"
    args: dict[str, Any] = {"app": ns.app, "lines": ns.lines, "stream": stream,
                            "follow": ns.follow}
    printer = LogPrinter(sys.stdout.write)
    end: object = None
    # A follower may wait forever for the next line: no timeout.
    client = ctx.client("logs", args, None if ns.follow else QUICK_TIMEOUT)
    frames = client.stream("logs", **args)
    nothing = False  # every selected stream goes elsewhere: not one file to show
    try:
        for first, frame in enumerate(frames, 1):
            reply = as_dict(frame)
            if first == 1:
                elsewhere = as_list(reply.get("elsewhere"))
                for entry in elsewhere:
                    print(f"procsup: {format_elsewhere(entry, lines=ns.lines, follow=ns.follow)}",
                          file=sys.stderr)
                nothing = bool(elsewhere) and reply.get("files") == 0
            printer.feed(frame)
            sys.stdout.flush()
            end = reply.get("end")
    except KeyboardInterrupt:
        if not ns.follow:
            raise
        return ExitCode.OK  # Ctrl-C is how one stops following
    finally:
        frames.close()
    if end:  # the daemon ended the stream early, e.g. this follower fell too far behind
        print(f"procsup: {end}", file=sys.stderr)
        return ExitCode.FAILED
    return ExitCode.FAILED if nothing else ExitCode.OK


def cmd_shutdown(ctx: _Context) -> int:
    wait = not ctx.ns.no_wait
    res = ctx.call("shutdown", None if wait else QUICK_TIMEOUT, wait=wait)
    if wait:
        _out(f"procsupd stopped {res.get('stopped', '?')} instance(s) and exited\n")
    else:
        _out("procsupd is shutting down\n")
    return ExitCode.OK


def cmd_version(ctx: _Context) -> int:
    if not ctx.ns.json:  # the client's own version even when the daemon cannot be reached
        _out(f"procsup {__version__} (protocol {protocol.VERSION})\n")
    res = ctx.call("version")
    if ctx.ns.json:
        daemon = {k: res.get(k) for k in ("version", "protocol")}
        daemon["cgroups"] = res.get("cgroups") is True  # an older daemon runs none
        for key in ("pid", "started", "reexecs", "reexec_error"):
            if key in res:
                daemon[key] = res[key]
        _out(json.dumps({"client": {"version": __version__, "protocol": protocol.VERSION},
                         "daemon": daemon}) + "\n")
        return ExitCode.OK
    _out(f"procsupd {res.get('version', '?')} (protocol {res.get('protocol', '?')})\n")
    return ExitCode.OK


#: How long `daemon-reexec` waits for the new image (the check, a reload to settle, the exec).
REEXEC_TIMEOUT = 150.0


def cmd_daemon_reexec(ctx: _Context) -> int:
    """Ask for the re-exec (the daemon checks the config first: a refusal says why), then wait
    until `version` answers from the new image, or says why the re-exec did not happen."""
    before = ctx.call("reexec", 90.0)
    count = before.get("reexecs")
    old = before.get("version", "?")
    deadline = time.monotonic() + REEXEC_TIMEOUT
    while True:
        try:
            res = ctx.call("version")
        except Unreachable:  # (the exec closed the connection: ask again)
            res = {}
        if isinstance(count, int) and isinstance(res.get("reexecs"), int):
            if res["reexecs"] > count:
                _out(f"procsupd re-executed: {old} -> {res.get('version', '?')} "
                     f"(pid {res.get('pid', '?')}, every app kept)\n")
                return ExitCode.OK
            if not res.get("reexec_busy") and res.get("reexec_error"):
                print(f"procsup: no re-exec: {res['reexec_error']}", file=sys.stderr)
                return ExitCode.FAILED
        if time.monotonic() > deadline:
            print(f"procsup: procsupd did not re-execute within {REEXEC_TIMEOUT:g} s; see its "
                  "log", file=sys.stderr)
            return ExitCode.FAILED
        time.sleep(0.05)


def cmd_ping(ctx: _Context) -> int:
    res = ctx.call("ping")
    _out(f"pong from procsupd {res.get('version', '?')} (pid {res.get('pid', '?')})\n")
    return ExitCode.OK


def _warn(res: dict[str, Any]) -> None:
    """The config's warnings (odd but valid values), on stderr: they are not the plan."""
    for warning in as_list(res.get("warnings")):
        print(f"procsup: warning: {warning}", file=sys.stderr)


def cmd_reread(ctx: _Context) -> int:
    res = ctx.call("reread")
    _out(json.dumps(res, sort_keys=False) + "\n" if ctx.ns.json else format_plan(res))
    if not ctx.ns.json:
        _warn(res)
    return ExitCode.OK


def cmd_update(ctx: _Context) -> int:
    wait = not ctx.ns.no_wait
    res = ctx.call("update", None if wait else QUICK_TIMEOUT, wait=wait)
    _out(format_plan(res))
    _warn(res)
    if res.get("error"):
        print(f"procsup: {res['error']}", file=sys.stderr)
    return ExitCode.FAILED if res.get("failed") else ExitCode.OK


def cmd_dump(ctx: _Context) -> int:
    text = str(ctx.call("dump").get("toml", ""))
    _out(text if text.endswith("\n") or not text else text + "\n")
    return ExitCode.OK


class LocalFiles:
    """The file system as the importers see it (`procsup.importers.Files`)."""

    def read_text(self, path: str) -> str:
        with open(path, encoding="utf-8") as f:
            return f.read()

    def glob(self, pattern: str) -> list[str]:
        import glob

        return sorted(glob.glob(pattern))

    def is_file(self, path: str) -> bool:
        return os.path.isfile(path)


def cmd_import(ctx: _Context) -> int:
    """`procsup import pm2|supervisord FILE [-o OUT] [--force]`: no daemon involved. The TOML
    goes to stdout or OUT; each setting without an equivalent is a warning on stderr."""
    ns = ctx.ns
    source = os.path.abspath(ns.file)
    output = ns.output
    if output is not None:
        if os.path.exists(output) and os.path.samefile(output, source):
            print(f"procsup: {output} is the file being imported; choose another --output",
                  file=sys.stderr)
            return ExitCode.FAILED
        if os.path.exists(output) and not ns.force:
            print(f"procsup: {output} exists; use --force to overwrite it", file=sys.stderr)
            return ExitCode.FAILED
    if ns.format == "pm2":
        from procsup.importers import pm2

        result = pm2.convert(source, LocalFiles(), os.environ)
    else:
        import platform

        from procsup.importers import supervisord

        result = supervisord.convert(source, LocalFiles(), os.environ, platform.node())
    for note in result.notes:
        print(f"procsup: warning: {note}", file=sys.stderr)
    if output is None:
        _out(result.toml)
        return ExitCode.OK
    try:
        # "x" refuses a file that appeared since the check above; --force replaces it.
        with open(output, "w" if ns.force else "x", encoding="utf-8") as f:
            f.write(result.toml)
    except OSError as exc:
        print(f"procsup: cannot write {output}: {exc.strerror or exc}", file=sys.stderr)
        return ExitCode.FAILED
    print(f"procsup: wrote {output} ({len(result.notes)} warning(s)); check it with "
          f"`procsupd --check -c {output}`", file=sys.stderr)
    return ExitCode.OK


# --------------------------------------------------------------------------- arguments


def parse_signal_arg(text: str) -> int:
    """A signal for `procsup signal`: "SIGUSR2", "USR2", "usr2" or "12"."""
    from procsup.units import parse_signal

    try:
        return parse_signal(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {n}")
    return n


def _columns() -> int:
    """The terminal's width as `shutil.get_terminal_size()` gives it: $COLUMNS if a positive
    number, else the width of the terminal on stdout, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    stdout = sys.__stdout__
    if stdout is None:
        return 80
    try:
        return os.get_terminal_size(stdout.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):  # closed, detached, not a terminal
        return 80


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's own, with the width it would choose, found without `shutil`: argparse makes
    a formatter for every argument added (to check its metavar), and its default one imports
    `shutil` for the width, which imports bz2, lzma and zlib: 5 ms of every run of `procsup`,
    a sixth of its start-up in a regular install (docs/benchmarks.md)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_columns() - 2)  # argparse keeps 2 columns free


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """`procsup`'s argument parser. When `command` names a command (or an alias), only that
    command's sub-parser is made: arguments whose command word is `command` parse exactly as
    with every sub-parser, in 2 ms instead of 5 (argparse looks up its messages in the
    translation catalogues for every parser it makes, and there are 16). Help for procsup
    itself and an unknown command need them all (None)."""
    p = argparse.ArgumentParser(
        prog="procsup", description="Control a running procsupd.", formatter_class=_HelpFormatter,
        epilog="exit status: 0 ok, 1 the request failed, 2 usage error, "
        "3 cannot reach the daemon. '--' ends the options: an app name that starts with '-' "
        "(which older versions accepted) goes after it, as in: procsup stop -- -h",
    )
    p.add_argument("-c", "--config", metavar="CONFIG",
                   help="find the socket from this config file's [procsup] socket")
    p.add_argument("-s", "--socket", metavar="SOCKET", help="the control socket of procsupd")
    p.add_argument("--version", action="version", version=f"procsup {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True)
    made: list[str] = []

    def add(name: str, handler: Callable[[_Context], int], help: str,
            aliases: Sequence[str] = ()) -> argparse.ArgumentParser | None:
        """The sub-parser of `name`, or None when only another command's is wanted."""
        if command is not None and command != name and command not in aliases:
            return None
        sp = sub.add_parser(name, help=help, description=help, aliases=list(aliases),
                            formatter_class=_HelpFormatter)
        sp.set_defaults(handler=handler, cmd=name)
        made.append(name)
        return sp

    def no_wait(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--no-wait", action="store_true", help="return at once, do not wait")

    if sp := add("status", cmd_status, "one row per instance", aliases=["ls"]):
        sp.add_argument("apps", nargs="*", metavar="APP", help="only these apps")
        sp.add_argument("--json", action="store_true", help="print the daemon's JSON object")
    for name, text in (
        ("start", "start stopped or errored instances"),
        ("stop", "stop instances (they stay stopped until started, or until an applied "
                 "config changes their app)"),
        ("restart", "stop then start; resets the restart counter"),
        ("reload", "rolling restart; in place with reload_signal; stop-then-start, said so"),
    ):
        if sp := add(name, cmd_outcome, text):
            sp.add_argument("apps", nargs="+", metavar="APP", help=_APPS_HELP)
            no_wait(sp)
    if sp := add("scale", cmd_scale, "run N instances of APP now (until the next config apply)"):
        sp.add_argument("app", metavar="APP")
        sp.add_argument("instances", metavar="N", type=_count)
        no_wait(sp)
    for name, text in (
        ("disable", "stop APP and keep it stopped across applies and daemon restarts, until "
                    "`procsup enable APP`"),
        ("enable", "undo `disable` and start APP"),
    ):
        if sp := add(name, cmd_toggle, text):
            sp.add_argument("apps", nargs="+", metavar="APP", help="app name")
            no_wait(sp)
    if sp := add("signal", cmd_signal, "send a signal to every instance's process group"):
        sp.add_argument("sig", metavar="SIG", type=parse_signal_arg, help="SIGUSR2, USR2 or 12")
        sp.add_argument("apps", nargs="+", metavar="APP", help=_APPS_HELP)
    if sp := add("reread", cmd_reread, "read the config and print the plan; changes nothing"):
        sp.add_argument("--json", action="store_true", help="print the plan as JSON")
    if sp := add("update", cmd_update, "read the config and apply the plan"):
        no_wait(sp)
    if sp := add("logs", cmd_logs, "print the last lines of the logs"):
        sp.add_argument("app", nargs="?", metavar="APP", help="only this app (default: all)")
        sp.add_argument("-n", "--lines", type=int, default=20, metavar="N",
                        help="lines per file (default 20)")
        sp.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
        which = sp.add_mutually_exclusive_group()
        which.add_argument("--err", action="store_true", help="only stderr")
        which.add_argument("--out", action="store_true", help="only stdout")
    add("dump", cmd_dump, "print the effective config as TOML")
    add("daemon-reexec", cmd_daemon_reexec, "re-execute the daemon with the code now "
        "installed, keeping every app running (the config is checked first)")
    if sp := add("shutdown", cmd_shutdown, "stop every app, then the daemon"):
        no_wait(sp)
    if sp := add("import", cmd_import, "translate a PM2 ecosystem or a supervisord config into "
                 "procsup TOML (no daemon needed)"):
        sp.add_argument("format", choices=("pm2", "supervisord"), metavar="pm2|supervisord")
        sp.add_argument("file", metavar="FILE",
                        help="ecosystem .json/.yaml/.yml/.js/.cjs, or supervisord .conf")
        sp.add_argument("-o", "--output", metavar="OUT",
                        help="write the TOML here, not to stdout")
        sp.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    if sp := add("version", cmd_version, "print the client's and the daemon's version"):
        sp.add_argument("--json", action="store_true",
                        help='print both as JSON, with the daemon\'s "cgroups"')
    add("ping", cmd_ping, "check that the daemon answers")
    if command is not None and not made:  # not a command: argparse's error lists them all
        return build_parser()
    return p


def command_word(args: Sequence[str]) -> str | None:
    """The word of `args` that argparse takes for the command, when each option before it is
    `-c`/`-s` in one of argparse's exact forms (`-s X`, `-sX`, `-s=X`, `--socket X`,
    `--socket=X`); None otherwise (`-h`, `--version`, an abbreviation such as `--sock`, `--`,
    no command): a guess `build_parser` may rely on, since it is never a wrong one."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-c", "-s", "--config", "--socket"):
            i += 2  # the option and its value, whatever the value looks like
        elif arg.startswith(("-c", "-s", "--config=", "--socket=")):
            i += 1
        elif arg.startswith("-"):
            return None
        else:
            return arg
    return None


def main(argv: list[str] | None = None) -> int:
    """Run `procsup` with `argv` (default: sys.argv[1:]); returns the exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_word(args))
    if not args or args == ["help"]:
        parser.print_help(sys.stdout if args else sys.stderr)
        return ExitCode.OK if args else ExitCode.USAGE
    try:
        ns = parser.parse_args(args)
    except SystemExit as exc:  # argparse: 2 for usage errors, 0 for --help
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    handler: Callable[[_Context], int] = ns.handler
    try:
        return int(handler(_Context(ns)))
    except _UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"procsup: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except (Unreachable, _NoSocket) as exc:
        print(f"procsup: {exc}", file=sys.stderr)
        return ExitCode.UNREACHABLE
    except (RemoteError, ProtocolError) as exc:
        print(f"procsup: {exc.message}", file=sys.stderr)
        return ExitCode.FAILED
    except ProcsupError as exc:
        print(f"procsup: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout went away (`procsup logs | head`): not an error worth a traceback. Point
        # stdout at /dev/null so the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return ExitCode.FAILED


if __name__ == "__main__":
    sys.exit(main())
