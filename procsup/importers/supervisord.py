"""`procsup import supervisord FILE`: a supervisord .conf -> procsup TOML (layer 1, pure).

The file is read as supervisord reads it (configparser, `;` and `#` comments, inline ones after
whitespace), `[include] files =` is followed (globs relative to the including file; included
files cannot include further, as in supervisord), and `%(name)s` expansions are done with
supervisord's names: `here`, `program_name`, `group_name`, `host_node_name`, `process_num`,
`numprocs` and `ENV_X` (from the environment passed in). What each option becomes is listed in
docs/migrating.md; the rules that need a decision:

- supervisord's defaults are written where procsup's differ (`autorestart = "on-failure"` for
  supervisord's `unexpected`, `max_restarts = 3`, `kill_timeout = "10s"`, `log_max_size =
  "50M"`, `log_retain = 10`), so the imported app behaves as it did.
- `numprocs = N` becomes `instances = N`. Where `%(process_num)` appears in `command` or in an
  `environment` value, that per-instance value is computed by /bin/sh from procsup's
  `$PROCSUP_INSTANCE` (+ numprocs_start): the app gets `shell = true` and a command that
  `exec`s the same argv supervisord would have run. In log file names it is dropped, since
  procsup already gives each instance its own file (`-<i>` before the suffix).
- `autostart = false` becomes `instances = 0` (start it with `procsup scale APP N`).
- `[group:x]`: procsup has no groups; the programs are imported as apps, with a note.
- Daemon sections: `childlogdir` -> `log_dir`, `[unix_http_server] chmod`/`chown` group ->
  `socket_mode`/`socket_group`, `[supervisord] environment`/`umask`/`directory` -> every app.
  The socket and pid file paths are not imported, so procsupd and supervisord can run side by
  side while you migrate.

The ini syntax (sections, line numbers, `environment`, booleans) is in `ini`.
Imports only layer 0, `schema` and the package's own modules.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping

from procsup import units
from procsup.errors import ConfigError
from procsup.importers import (
    NAME_RULES,
    AppTable,
    Files,
    Note,
    Result,
    app_name,
    is_device,
    read,
    render,
)
from procsup.importers.ini import Section, boolean, parse, parse_environment

#: A `%(process_num)...` expansion with its printf-style flags, width and conversion.
_PROCESS_NUM_RE = re.compile(r"%\(process_num\)([-#0 +]*\d*(?:\.\d+)?)([diouxXeEfFgGcrsa])")
_SENTINEL_RE = re.compile("\x00(\\d+)\x00")

#: Program options that are mapped (or knowingly noted); others get a generic note.
_PROGRAM_KEYS = frozenset({
    "command", "process_name", "numprocs", "numprocs_start", "priority", "autostart",
    "startsecs", "startretries", "autorestart", "exitcodes", "stopsignal", "stopwaitsecs",
    "stopasgroup", "killasgroup", "user", "redirect_stderr", "stdout_logfile",
    "stdout_logfile_maxbytes", "stdout_logfile_backups", "stdout_capture_maxbytes",
    "stdout_events_enabled", "stdout_syslog", "stderr_logfile", "stderr_logfile_maxbytes",
    "stderr_logfile_backups", "stderr_capture_maxbytes", "stderr_events_enabled",
    "stderr_syslog", "environment", "directory", "umask", "serverurl",
})

_SUPERVISORD_NOTES = {
    "logfile": "procsupd's own log is <log_dir>/procsupd.log",
    "logfile_maxbytes": "procsupd's own log is rotated by logrotate (SIGUSR1 reopens it)",
    "logfile_backups": "procsupd's own log is rotated by logrotate (SIGUSR1 reopens it)",
    "loglevel": "procsupd has no log level setting",
    "pidfile": "procsupd keeps its own pid file ([procsup] pidfile); not imported, so both "
               "daemons can run side by side while you migrate",
    "nodaemon": "run `procsupd -n` to stay in the foreground",
    "silent": "`procsupd -n` logs to stderr; without -n it logs to its file",
    "minfds": "procsupd raises its open-files limit itself (ulimit -n / LimitNOFILE otherwise)",
    "minprocs": "set the process limit with ulimit -u or systemd's LimitNPROC",
    "nocleanup": "procsup never deletes app logs at start",
    "user": "run procsupd as that user (or set user on each app)",
    "identifier": "procsupd has no RPC identifier",
    "strip_ansi": "procsup writes app output as it comes",
}


def convert(path: str, files: Files, environ: Mapping[str, str], hostname: str) -> Result:
    """The procsup TOML for the supervisord config at `path` (absolute), reading it and its
    includes through `files`. `environ` gives `%(ENV_X)s`, `hostname` `%(host_node_name)s`.

    Raises ConfigError (file:line where known) for a file that cannot be read or parsed, a
    value supervisord would reject, or an expansion it cannot do.
    """
    return _Importer(path, files, environ, hostname).run()


class _Importer:
    def __init__(self, path: str, files: Files, environ: Mapping[str, str],
                 hostname: str) -> None:
        self.path = path
        self.files = files
        self.environ = environ
        self.hostname = hostname
        self.notes: list[Note] = []
        self.sections: list[Section] = []
        self.daemon: dict[str, object] = {}
        self.common_env: dict[str, str] = {}
        self.common: dict[str, object] = {}  # umask, cwd for every app from [supervisord]

    def where(self, section: Section, key: str | None = None) -> str:
        line = section.lines.get(key, section.line) if key else section.line
        return f"{section.file}:{line}"

    def note(self, section: Section, app: str | None, key: str, message: str) -> None:
        self.notes.append(Note(self.where(section, key), app, key, message))

    def fail(self, section: Section, key: str | None, message: str,
             app: str | None = None) -> ConfigError:
        line = section.lines.get(key, section.line) if key else section.line
        return ConfigError(message, file=section.file, line=line, app=app, key=key)

    # -- reading -----------------------------------------------------------------------------

    def expand(self, section: Section, key: str, value: str, names: Mapping[str, object],
               app: str | None = None) -> str:
        try:
            return value % names
        except KeyError as exc:
            if str(exc.args[0]).startswith("ENV_"):
                raise self.fail(section, key, f"%({exc.args[0]})s: the environment variable "
                                f"{exc.args[0][4:]} is not set", app) from None
            known = ", ".join(sorted(k for k in names if not k.startswith("ENV_")))
            raise self.fail(section, key, f"%({exc.args[0]})s cannot be expanded: supervisord "
                            f"knows {known} and ENV_<variable>", app) from None
        except (ValueError, TypeError) as exc:
            raise self.fail(section, key, f"bad %(...) expansion in {value!r}: {exc}",
                            app) from None

    def base_names(self, section: Section) -> dict[str, object]:
        names: dict[str, object] = {f"ENV_{k}": v for k, v in self.environ.items()}
        names["here"] = os.path.dirname(section.file)
        names["host_node_name"] = self.hostname
        return names

    def read_all(self) -> None:
        main = parse(self.path, read(self.files, self.path))
        self.sections = [s for s in main if s.name != "include"]
        for section in main:
            if section.name != "include":
                continue
            if "files" not in section.options:
                raise self.fail(section, None, "[include] needs a files = ... option")
            value = self.expand(section, "files", section.options["files"],
                                self.base_names(section))
            for pattern in value.split():
                full = os.path.join(os.path.dirname(self.path), pattern)
                for included in self.files.glob(full):
                    text = read(self.files, included, where=self.path,
                                line=section.lines.get("files", section.line))
                    for sub in parse(included, text):
                        if sub.name == "include":
                            self.note(sub, None, "[include]", "not followed: supervisord "
                                      "reads [include] only in the main file")
                        else:
                            self.sections.append(sub)
        seen: dict[str, Section] = {}
        for section in self.sections:
            first = seen.setdefault(section.name, section)
            if first is not section:
                raise self.fail(section, None, f"[{section.name}] is defined twice: first in "
                                f"{self.where(first)}")

    # -- converting --------------------------------------------------------------------------

    def run(self) -> Result:
        self.read_all()
        by_kind: dict[str, list[Section]] = {}
        for section in self.sections:
            kind = section.name.split(":", 1)[0] if ":" in section.name else section.name
            by_kind.setdefault(kind, []).append(section)
        for section in by_kind.get("supervisord", []):
            self.supervisord(section)
        for section in by_kind.get("unix_http_server", []):
            self.unix_http_server(section)
        programs = {s.name.split(":", 1)[1].strip(): s for s in by_kind.get("program", [])}
        group_of: dict[str, str] = {}
        for section in by_kind.get("group", []):
            group = section.name.split(":", 1)[1].strip()
            members = [p.strip() for p in section.options.get("programs", "").split(",")
                       if p.strip()]
            for member in members:
                if member not in programs:
                    raise self.fail(section, "programs", f"program {member!r} of group "
                                    f"{group!r} is not defined ([program:{member}])")
                group_of[member] = group
            self.note(section, None, f"[group:{group}]", "procsup has no groups: its programs "
                      f"({', '.join(members)}) are imported as apps; name them together, "
                      f"e.g. `procsup restart {' '.join(members)}`")
        for section in self.sections:
            kind = section.name.split(":", 1)[0]
            if kind in ("supervisord", "unix_http_server", "program", "group"):
                continue
            message = {
                "inet_http_server": "procsup has no TCP or HTTP control interface; procsup "
                                    "talks to procsupd over its Unix socket only",
                "supervisorctl": "client settings: `procsup` finds the socket from -s, -c, "
                                 "$PROCSUP_SOCKET or the config",
                "rpcinterface": "procsup has no XML-RPC interface (its protocol is in "
                                "docs/protocol.md)",
                "eventlistener": "procsup has no event listeners; not imported",
                "fcgi-program": "procsup's cluster mode passes sockets as fd 3.. (socket "
                                "activation), not FastCGI's fd 0; not imported",
                "ctlplugin": "procsup has no supervisorctl plugins",
            }.get(kind, "unknown section; not imported")
            self.note(section, None, f"[{section.name}]", message)
        taken: set[str] = set()
        apps: dict[str, dict[str, object]] = {}
        for program, section in programs.items():
            name, table = _Program(self, section, program, group_of.get(program, program),
                                   taken).convert()
            apps[name] = table
        if not apps:
            raise ConfigError("no [program:x] sections to import", file=self.path)
        return render("supervisord", self.path, self.daemon, apps, self.notes)

    def supervisord(self, section: Section) -> None:
        names = self.base_names(section)
        for key, raw in section.options.items():
            value = self.expand(section, key, raw, names)
            if key == "childlogdir":
                self.daemon["log_dir"] = os.path.join(os.path.dirname(section.file), value)
            elif key == "environment":
                try:
                    self.common_env = parse_environment(value)
                except ValueError as exc:
                    raise self.fail(section, key, str(exc)) from None
            elif key == "umask":
                self.common["umask"] = units.format_mode(self.mode(section, key, value))
            elif key == "directory":
                self.common["cwd"] = os.path.join(os.path.dirname(section.file), value)
            else:
                self.note(section, None, key, _SUPERVISORD_NOTES.get(
                    key, "not a [supervisord] option procsup knows; not imported"))

    def unix_http_server(self, section: Section) -> None:
        names = self.base_names(section)
        for key, raw in section.options.items():
            value = self.expand(section, key, raw, names)
            if key == "chmod":
                self.daemon["socket_mode"] = units.format_mode(self.mode(section, key, value))
            elif key == "chown" and ":" in value:
                self.daemon["socket_group"] = value.split(":", 1)[1]
                self.note(section, None, key, f"procsupd owns its socket; only the group "
                          f"({value.split(':', 1)[1]}) is imported, as socket_group")
            elif key == "file":
                self.note(section, None, key, "procsupd keeps its own socket ([procsup] "
                          "socket); not imported, so both daemons can run side by side while "
                          "you migrate")
            elif key in ("username", "password"):
                self.note(section, None, key, "procsup checks the peer's uid and group on its "
                          "Unix socket (socket_mode, socket_group) instead of passwords")
            else:
                self.note(section, None, key, "not imported")

    def mode(self, section: Section, key: str, value: str) -> int:
        try:
            return units.parse_mode(value)
        except ValueError as exc:
            raise self.fail(section, key, str(exc)) from None


class _Program(AppTable):
    """One `[program:x]` -> (procsup name, table); notes go to the importer."""

    def __init__(self, importer: _Importer, section: Section, program: str, group: str,
                 taken: set[str]) -> None:
        self.imp = importer
        self.section = section
        self.program = program
        self.group = group
        self.name = app_name(program, taken)
        self.out: dict[str, object] = {}
        self.opts = dict(section.options)
        self.values: dict[str, str] = {}  # expanded options, process_num as sentinels
        self.templates: list[str] = []  # printf spec of each process_num sentinel
        self.start = 0  # numprocs_start: the process_num of instance 0
        self.numprocs = 1
        self.numbered_logs: set[str] = set()  # "stdout"/"stderr" named with %(process_num)

    def note(self, key: str, message: str) -> None:
        self.imp.note(self.section, self.name, key, message)

    def fail(self, key: str | None, message: str) -> ConfigError:
        return self.imp.fail(self.section, key, message, self.name)

    def integer(self, key: str, default: int, minimum: int = 0) -> int:
        raw = self.opts.pop(key, None)
        if raw is None:
            return default
        try:
            value = int(self.imp.expand(self.section, key, raw, self.names(1), self.name))
        except ValueError:
            raise self.fail(key, f"expected an integer, got {raw!r}") from None
        if value < minimum:
            raise self.fail(key, f"must be >= {minimum}, got {value}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        raw = self.opts.pop(key, None)
        if raw is None:
            return default
        try:
            return boolean(self.values.get(key, raw))
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None

    def names(self, numprocs: int) -> dict[str, object]:
        names = self.imp.base_names(self.section)
        names.update(program_name=self.program, group_name=self.group, numprocs=numprocs,
                     process_num=self.start)
        return names

    def convert(self) -> tuple[str, dict[str, object]]:
        if self.name != self.program:
            self.note("[program]", f"renamed {self.program!r} to {self.name!r} ({NAME_RULES})")
        self.start = self.integer("numprocs_start", 0)
        numprocs = self.numprocs = self.integer("numprocs", 1, minimum=1)
        names = self.names(numprocs)
        # Expand everything now; `%(process_num)` becomes a sentinel where it varies.
        for key, raw in self.opts.items():
            text = _PROCESS_NUM_RE.sub(self._sentinel, raw) if numprocs > 1 else raw
            self.values[key] = self.imp.expand(self.section, key, text, names, self.name)
        self.command_and_env()
        if numprocs != 1:
            self.out["instances"] = numprocs
        if not self.flag("autostart", True):
            self.out["instances"] = 0
            self.note("autostart", f"procsup starts every configured instance; imported as "
                      f"instances = 0 (numprocs was {numprocs}): start it with "
                      f"`procsup scale {self.name} {numprocs}` (until the next config apply)")
        for key in ("directory", "user", "umask"):
            value = self.plain(key)
            if value is None:
                continue
            if key == "directory":
                if not os.path.isabs(value):
                    self.note(key, "relative: supervisord resolves it against its own working "
                              "directory; imported relative to the config file's directory")
                self.out["cwd"] = os.path.normpath(
                    os.path.join(os.path.dirname(self.section.file), value))
            elif key == "user":
                self.checked(key, "user", value)
            else:
                self.out["umask"] = units.format_mode(self.imp.mode(self.section, key, value))
        for key, common in self.imp.common.items():
            self.out.setdefault(key, common)
        self.restarts()
        self.logs()
        for key in list(self.opts):
            self.opts.pop(key)
            if key not in _PROGRAM_KEYS:
                self.note(key, "not a supervisord program option procsup knows; not imported")
        return self.name, self.out

    def _sentinel(self, m: re.Match[str]) -> str:
        self.templates.append(m.group(1) + m.group(2))
        return f"\x00{len(self.templates) - 1}\x00"

    def plain(self, key: str) -> str | None:
        """An option's expanded value; `%(process_num)` there takes its first value, noted."""
        if key not in self.opts:
            return None
        self.opts.pop(key)
        value = self.values[key]
        if _SENTINEL_RE.search(value):
            self.note(key, "%(process_num) here cannot differ per instance in procsup; "
                      f"imported with the first value ({self.start})")
            value = _SENTINEL_RE.sub(lambda m: self.printf(int(m.group(1)), self.start), value)
        return value

    def printf(self, index: int, number: int) -> str:
        return ("%" + self.templates[index]) % number

    def shell_word(self, text: str) -> str:
        """One argv word for /bin/sh, with each sentinel as the per-instance number."""
        parts: list[str] = []
        pos = 0
        for m in _SENTINEL_RE.finditer(text):
            if m.start() > pos:
                parts.append(shlex.quote(text[pos : m.start()]))
            spec = self.templates[int(m.group(1))]
            number = f"$((PROCSUP_INSTANCE + {self.start}))" if self.start else \
                "$PROCSUP_INSTANCE"
            if spec in ("s", "d", "i", "u", "r", "a"):
                parts.append(f'"{number}"')
            else:
                parts.append(f"\"$(printf '%{spec}' \"{number}\")\"")
            pos = m.end()
        if pos < len(text) or not parts:
            parts.append(shlex.quote(text[pos:]))
        return "".join(parts)

    def command_and_env(self) -> None:
        if "command" not in self.opts:
            raise self.fail(None, f"[program:{self.program}] has no command")
        self.opts.pop("command")
        command = self.values["command"]
        env = dict(self.imp.common_env)
        raw_env = self.opts.pop("environment", None)
        if raw_env is not None:
            try:
                env.update(parse_environment(self.values["environment"]))
            except ValueError as exc:
                raise self.fail("environment", str(exc)) from None
        varying = {k: v for k, v in env.items() if _SENTINEL_RE.search(v)}
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise self.fail("command", f"cannot split the command line: {exc}") from None
        if not argv:
            raise self.fail("command", "the command is empty")
        if varying or _SENTINEL_RE.search(command):
            # The per-instance value is only known when the instance starts: /bin/sh computes
            # it from PROCSUP_INSTANCE, then execs exactly the argv supervisord would run.
            exports = "".join(f"export {k}={self.shell_word(v)}; " for k, v in varying.items())
            self.out["command"] = exports + "exec " + " ".join(self.shell_word(a) for a in argv)
            self.out["shell"] = True
            self.note("command" if _SENTINEL_RE.search(command) else "environment",
                      "%(process_num) becomes $PROCSUP_INSTANCE"
                      + (f" + {self.start}" if self.start else "")
                      + ", computed by /bin/sh (shell = true) when each instance starts")
        else:
            self.out["command"] = command
        fixed = {k: v for k, v in env.items() if k not in varying}
        if fixed:
            self.out["env"] = fixed
        if "process_name" in self.opts:
            self.opts.pop("process_name")
            self.note("process_name", f"procsup names instances {self.name}:0, {self.name}:1, "
                      "...; not imported")

    def restarts(self) -> None:
        autorestart = self.opts.pop("autorestart", "unexpected").strip().lower()
        if autorestart == "unexpected":
            self.out["autorestart"] = "on-failure"
        else:
            try:
                self.out["autorestart"] = boolean(autorestart)
            except ValueError:
                raise self.fail("autorestart", f"expected true, false or unexpected, got "
                                f"{autorestart!r}") from None
        codes = self.opts.pop("exitcodes", None)
        if codes is not None:
            try:
                code_set = {int(c) for c in codes.split(",") if c.strip()}
            except ValueError:
                raise self.fail("exitcodes", f"expected integers, got {codes!r}") from None
            if code_set != {0}:
                self.note("exitcodes", f"procsup counts only exit 0 as expected (for "
                          f"autorestart = \"on-failure\"); {codes!r} not imported")
        startsecs = self.integer("startsecs", -1)
        if startsecs >= 0:
            self.out["min_uptime"] = f"{startsecs}s"
        self.out["max_restarts"] = self.integer("startretries", 3)
        if "stopsignal" in self.opts:
            raw = self.opts.pop("stopsignal")
            try:
                signum = units.parse_signal(raw)
            except ValueError as exc:
                raise self.fail("stopsignal", str(exc)) from None
            self.out["kill_signal"] = units.signal_name(signum)
        self.out["kill_timeout"] = f"{self.integer('stopwaitsecs', 10)}s"
        for key in ("stopasgroup", "killasgroup"):
            if key in self.opts and not self.flag(key, False):
                self.note(key, "procsup always signals the whole process group (as "
                          "stopasgroup = killasgroup = true)")
            self.opts.pop(key, None)
        if "priority" in self.opts:
            self.opts.pop("priority")
            self.note("priority", "procsup has no start order: apps start together")

    def logs(self) -> None:
        redirect = self.flag("redirect_stderr", False)
        files: dict[str, str | bool | None] = {}
        for stream in ("stdout", "stderr"):
            value = self.plain_log(f"{stream}_logfile")
            files[stream] = value
        out = files["stdout"]
        if redirect:
            if "stderr_logfile" in self.section.options:
                self.note("stderr_logfile", "ignored with redirect_stderr = true, as "
                          "supervisord does")
            if out is None:  # AUTO: one file in log_dir for both streams
                out = f"{self.name}.log"
            self.out["out_file"] = self.out["error_file"] = out
        else:
            for stream, key in (("stdout", "out_file"), ("stderr", "error_file")):
                if files[stream] is not None:
                    self.out[key] = files[stream]
        if self.numprocs > 1 and any(isinstance(f, str) for f in files.values()):
            # A file named without %(process_num) is shared by every process in supervisord;
            # merge_logs keeps it one file (procsup would otherwise add "-<i>" per instance).
            shared = [s for s, f in files.items() if isinstance(f, str)
                      and (is_device(f) or s not in self.numbered_logs)]
            if shared:
                self.out["merge_logs"] = True
                if len(shared) < sum(isinstance(f, str) for f in files.values()):
                    self.note(f"{shared[0]}_logfile", "procsup's merge_logs is one setting "
                              "for both streams: every log file of this app is shared by its "
                              "instances")
        logged = [] if self.out.get("out_file") is False else ["stdout"]
        if not redirect and self.out.get("error_file") is not False:
            logged.append("stderr")
        sizes: dict[str, int] = {}
        backups: dict[str, int] = {}
        for stream in ("stdout", "stderr"):
            raw = self.opts.pop(f"{stream}_logfile_maxbytes", "50MB")
            try:
                sizes[stream] = units.parse_size(raw)
            except ValueError as exc:
                raise self.fail(f"{stream}_logfile_maxbytes", str(exc)) from None
            backups[stream] = self.integer(f"{stream}_logfile_backups", 10)
            for extra, default in (("capture_maxbytes", "0"), ("events_enabled", "false"),
                                   ("syslog", "false")):
                key = f"{stream}_{extra}"
                raw_extra = self.opts.pop(key, None)
                if raw_extra is not None and raw_extra.strip().lower() not in (default, "0",
                                                                                "false", "no"):
                    self.note(key, "procsup has no equivalent; not imported")
        if logged:
            first = logged[0]
            if sizes[first] > 0:
                size = sizes[first]
                text = units.format_size(size)
                self.out["log_max_size"] = text if size % 1024 == 0 and \
                    units.parse_size(text) == size else size
                self.out["log_retain"] = backups[first]
            if len(logged) == 2 and (sizes["stdout"], backups["stdout"]) != (
                    sizes["stderr"], backups["stderr"]):
                self.note("stderr_logfile_maxbytes", "procsup has one log_max_size and "
                          "log_retain for both streams: the stdout values are used")

    def plain_log(self, key: str) -> str | bool | None:
        """A log file option: None for AUTO (procsup's default file), False for NONE."""
        if key not in self.opts:
            return None
        self.opts.pop(key)
        value = self.values[key].strip()
        if value.upper() == "AUTO":
            return None
        if value.upper() == "NONE":
            return False
        if value.lower() == "syslog":
            self.note(key, "procsup does not log to syslog; imported as its default log file")
            return None
        if _SENTINEL_RE.search(value):
            self.numbered_logs.add(key.split("_", 1)[0])
            # procsup already writes one file per instance ("-<i>" before the suffix).
            value = re.sub("[-_.]?\x00\\d+\x00", "", value)
            self.note(key, "%(process_num) dropped from the file name: procsup writes one file "
                      "per instance, named with -<i> (0..n-1) before the suffix")
        if not os.path.isabs(value):
            self.note(key, "relative: supervisord resolves it against its own working "
                      "directory; imported relative to the config file's directory")
            value = os.path.join(os.path.dirname(self.section.file), value)
        return os.path.normpath(value)
