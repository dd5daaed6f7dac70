"""TOML + includes + profile + defaults -> `Desired`, or `ConfigError(file, line, app, key)`.

Layer 1, and with `configfile` (which reads one file safely and parses it) the only module
that reads files (`globs` lists the directories of `include` for it, following no symlink
loop). `load()` either returns a complete `Desired` or raises; it starts nothing, creates no
directory and touches no network. The existence of `cwd`, users and groups is checked when an
instance is spawned, not here; env files are read here (their content is part of the app's
definition).

The default paths and the socket discovery of contract §1 are in `paths`, the TOML line
locator in `tomlpos`.
"""

from __future__ import annotations

import functools
import os
import shlex
import stat
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from procsup import configfile, deps, globs, paths, schema, shellsyntax, units
from procsup.errors import ConfigError, ConfigErrors
from procsup.model import JOURNAL, LOG_TARGETS, AppSpec, DaemonSpec, Desired, ExecMode
from procsup.values import (
    PROFILE_RE,
    ValueProblem,
    app_name_problem,
    parse_env_line,
    suggest,
    type_name,
)

# AppSpec fields taken from the converted value as is (the rest are resolved below).
_DIRECT_FIELDS = (
    "shell", "exec_mode", "inherit_env", "user", "group", "umask", "limits", "nice",
    "oom_score_adjust", "autorestart",
    "max_restarts", "min_uptime", "restart_delay", "exp_backoff_restart_delay", "kill_signal",
    "kill_timeout", "merge_logs", "log_date_format", "log_max_size", "log_retain", "log_format",
    "max_memory_restart", "ignore_watch", "cron_restart", "ready", "ready_timeout",
    "heartbeat_timeout", "balance", "depends_on", "health", "health_interval",
    "health_timeout", "health_failures", "reload_signal",
)  # fmt: skip
_DAEMON_DIRECT_FIELDS = ("socket_mode", "socket_group", "env", "watch_config", "shutdown_timeout")
#: The cgroup keys (procsup/cgroups.py), taken as they are too.
_CGROUP_FIELDS = ("memory_max", "cpu_weight", "pids_max")
_DAEMON_CGROUP_FIELDS = ("cgroups",)

#: At most this many problems are listed by one `ConfigErrors`; the rest are counted.
MAX_ERRORS = 20  # problems listed by one ConfigErrors (errors.py)


def _raise_all(errors: Sequence[ConfigError]) -> None:
    """Raise what `errors` holds, if anything: one problem as itself, more as ConfigErrors."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors, limit=MAX_ERRORS)


# -- load -------------------------------------------------------------------------------------


def load(
    path: str,
    *,
    profile: str | None = None,
    uid: int | None = None,
    environ: Mapping[str, str] | None = None,
    require_root_owned: bool = False,
) -> Desired:
    """Read the config at `path` with its includes and return the whole desired state.

    `profile` overrides `[procsup] env`. `uid` (default: ours) and `environ` (default:
    os.environ) choose the default paths. With `require_root_owned` (what a root daemon
    passes) every file must be owned by root and not group/other-writable.
    Raises ConfigError for anything invalid; never returns a partial result.
    """
    uid, environ = paths.uid_or_own(uid), paths.environ_or_own(environ)
    # Problems are collected rather than raised at once, so one broken file (or app) does not
    # hide the others; the result is still all or nothing. A main file that cannot be read or
    # parsed is the one exception: it names the includes, so nothing else can be checked.
    errors: list[ConfigError] = []
    main = configfile.read(os.path.abspath(path), require_root_owned)
    for key in main.data:
        if key not in ("procsup", "apps"):
            hint = _did_you_mean(key, ("procsup", "apps"))
            errors.append(main.error(f"unknown top-level key {key!r}{hint}", key, key=key))
    daemon = _daemon_spec(main, uid, environ, errors)
    active = profile if profile is not None else daemon.env
    if profile is not None and not PROFILE_RE.match(profile):
        errors.append(ConfigError(
            f"invalid profile name {profile!r}: use letters, digits, '_' and '-'", key="env"
        ))
        active = None

    apps: dict[str, AppSpec] = {}
    defined: dict[str, str] = {}  # name -> "file:line" of its first table, valid or not
    owners: dict[str, configfile.Source] = {}  # name -> the file of its table
    add_apps = functools.partial(
        _add_apps, daemon=daemon, profile=active, apps=apps, defined=defined, owners=owners,
        errors=errors,
    )
    add_apps(main)
    sources = [main]
    included, warnings = _included(main, daemon.include, errors)
    for found in included:
        try:
            src = _read_included(found, require_root_owned, errors)
        except ConfigError as exc:  # unreadable or not TOML: only this file is skipped
            errors.append(exc)
            continue
        sources.append(src)
        add_apps(src)
    if len(apps) == len(defined):  # with a broken app, "unknown app" could be wrong
        for p in deps.problems(apps):
            sub = (p.dependency,) if p.dependency and isinstance(
                owners[p.app].data["apps"][p.app].get("depends_on"), dict) else ()
            errors.append(owners[p.app].error(p.message, "apps", p.app, "depends_on", *sub,
                                              app=p.app, key="depends_on"))
    errors.extend(_journal_problems(apps, owners, paths.journal_socket(environ)))
    try:
        _raise_all(errors)
    except ConfigError as exc:
        exc.files = (main.path, *sorted(included))
        exc.include = daemon.include
        raise
    return Desired(daemon=daemon, apps=apps, profile=active, files=tuple(s.path for s in sources),
                   warnings=(*warnings, *_warnings(sources)))


def _journal_problems(apps: Mapping[str, AppSpec], owners: Mapping[str, configfile.Source],
                      socket: str) -> list[ConfigError]:
    """A "journal" log target where there is no journal socket (not a systemd host)."""
    try:
        there = stat.S_ISSOCK(os.stat(socket).st_mode)
    except OSError:
        there = False
    return [] if there else [
        owners[name].error(f'{key} = "journal", but there is no journal socket at {socket} '
                           "(systemd-journald is not running here)", "apps", name, key,
                           app=name, key=key)
        for name, app in apps.items() for key in ("out_file", "error_file")
        if getattr(app, key) == JOURNAL]


def _included(
    main: configfile.Source, patterns: Sequence[str], errors: list[ConfigError]
) -> tuple[list[str], list[str]]:
    """The files the `include` globs name, in order (each glob's matches sorted), each file
    once however many links or globs reach it; and a warning per glob that met a symlink
    loop. A glob past a bound of `globs.LIMITS` is an error of `include` (none of its files
    are read: the config is refused anyway)."""
    expander = globs.Expander()
    seen = {main.identity}
    files: list[str] = []
    warnings: list[str] = []

    def error(message: str) -> ConfigError:
        return main.error(message, "procsup", "include", key="include")

    for pattern in patterns:
        loops_before = len(expander.loops)
        try:
            matches = expander.expand(pattern)
        except globs.LimitExceeded as exc:
            errors.append(error(f"include {pattern!r} {exc.message}"))
            continue
        for found in matches:
            try:
                st = os.stat(found)
            except OSError:  # a dangling link, or gone since: nothing there, as for glob
                continue
            if stat.S_ISDIR(st.st_mode):  # a glob may match directories; they hold no apps
                continue
            # A special file goes on to be refused (by configfile.read_bytes) with its reason.
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            files.append(found)
        loops = expander.loops[loops_before:]
        if loops:
            links = ", ".join(f"{lp.link} -> {lp.target}" for lp in loops[:3])
            more = f" and {len(loops) - 3} more" if len(loops) > 3 else ""
            warnings.append(str(error(
                f"include {pattern!r}: a symlink loop, not followed: {links}{more}")))
    return files, warnings


def _warnings(sources: list[configfile.Source]) -> tuple[str, ...]:
    """Valid but probably not meant: a duration written as a small integer (milliseconds), a
    string command with shell syntax but no `shell = true` (`shellsyntax.warning`)."""
    out = []
    for src in sources:
        tables: list[tuple[object, tuple[str, ...], str | None, Mapping[str, schema.Key]]] = [
            (src.data.get("procsup"), ("procsup",), None, schema.DAEMON_KEYS)]
        apps = src.data.get("apps")
        if isinstance(apps, dict):
            tables += [(t, ("apps", n), n, schema.APP_KEYS) for n, t in apps.items()]
        for table, path, app, rows in tables:
            if not isinstance(table, dict):
                continue
            for key, value in table.items():
                hint = schema.duration_hint(rows.get(key), value)
                if key == "command" and isinstance(value, str) and table.get("shell") is not True:
                    hint = shellsyntax.warning(value)  # (only apps have a command)
                if hint is not None:
                    out.append(str(src.error(hint, *path, key, app=app, key=key)))
    return tuple(out)


def _add_apps(
    src: configfile.Source,
    *,
    daemon: DaemonSpec,
    profile: str | None,
    apps: dict[str, AppSpec],
    defined: dict[str, str],
    owners: dict[str, configfile.Source],
    errors: list[ConfigError],
) -> None:
    """Check the [apps.*] tables of `src` into `apps`, adding the first problem of each app to
    `errors` (a fix of one app rarely changes another, so the user sees every broken app).
    `defined` maps every app name seen so far, valid or not, to where: a name defined twice is
    an error even when its first table is broken."""
    table = src.data.get("apps", {})
    if not isinstance(table, dict):
        errors.append(src.error(f"'apps' must be a table, got {type_name(table)}", "apps"))
        return
    for name, raw in table.items():
        if name in defined:
            errors.append(src.error(
                f"app {name!r} is defined twice: first in {defined[name]}", "apps", name, app=name
            ))
            continue
        line = src.locator.table_line("apps", name)
        defined[name] = f"{src.path}:{line}" if line else src.path
        owners[name] = src
        try:
            apps[name] = _app_spec(src, name, raw, daemon, profile)
        except ConfigError as exc:
            errors.append(exc)


def _read_included(path: str, require_root_owned: bool,
                   errors: list[ConfigError]) -> configfile.Source:
    """Read and parse an include; raises ConfigError if it cannot. Top-level content other
    than `apps` is added to `errors` (the caller still checks the file's apps)."""
    src = configfile.read(path, require_root_owned)
    for key, value in src.data.items():
        if key != "apps":
            what = f"[{key}]" if isinstance(value, dict) else f"key {key!r}"
            errors.append(src.error(
                f"an included file may only hold [apps.*] tables, found {what}", key, key=key
            ))
    return src


def _did_you_mean(name: str, known: tuple[str, ...] | Mapping[str, object]) -> str:
    close = suggest(name, known)
    return f"; did you mean {close!r}?" if close else ""


def _check_table(
    src: configfile.Source,
    table: Mapping[str, object],
    rows: Mapping[str, schema.Key],
    errors: list[ConfigError],
    *path: str,
) -> dict[str, Any]:
    """Validate and convert the `[procsup]` table (apps have their own loop: env_<profile>).

    Each bad key is added to `errors` and left out of the result."""
    out: dict[str, Any] = {}
    for key, raw in table.items():
        row = rows.get(key)
        if row is None:
            hint = _did_you_mean(key, rows)
            errors.append(src.error(f"unknown key {key!r}{hint}", *path, key, key=key))
            continue
        try:
            out[key] = schema.check(row, raw)
        except ValueProblem as p:
            sub = (p.subkey,) if p.subkey else ()
            errors.append(src.error(p.message, *path, key, *sub, key=key))
    return out


def _daemon_spec(
    src: configfile.Source, uid: int, environ: Mapping[str, str], errors: list[ConfigError]
) -> DaemonSpec:
    """The `[procsup]` table resolved. Problems go to `errors`; the spec is then built from the
    valid keys and defaults, only so that the apps can still be checked."""
    table = src.data.get("procsup", {})
    if not isinstance(table, dict):
        errors.append(
            src.error(f"'procsup' must be a table, got {type_name(table)}", "procsup")
        )
        table = {}
    values = _check_table(src, table, schema.DAEMON_KEYS, errors, "procsup")

    def path_of(key: str, default: str) -> str:
        value = values.get(key)
        return src.resolve(value) if isinstance(value, str) else default

    if uid == 0:
        socket = path_of("socket", paths.ROOT_SOCKET)
        pidfile = path_of("pidfile", paths.ROOT_PIDFILE)
        log_dir = path_of("log_dir", paths.ROOT_LOG_DIR)
        state_dir = path_of("state_dir", paths.ROOT_STATE_DIR)
    else:
        runtime = paths.runtime_dir(uid, environ)
        socket = path_of("socket", os.path.join(runtime, "procsup.sock"))
        pidfile = path_of("pidfile", os.path.join(runtime, "procsupd.pid"))
        try:  # computed only when not set: the home directory may be unknown
            log_dir = path_of("log_dir", "") or os.path.join(paths.state_base(uid, environ), "logs")
            state_dir = path_of("state_dir", "") or os.path.join(
                paths.state_base(uid, environ), "state"
            )
        except ConfigError as exc:
            errors.append(ConfigError(exc.message, file=src.path))
            log_dir = state_dir = ""
    direct = {k: values[k] for k in _DAEMON_DIRECT_FIELDS + _DAEMON_CGROUP_FIELDS
              if k in values}
    return DaemonSpec(
        config_path=src.path,
        socket=socket,
        pidfile=pidfile,
        log_dir=log_dir,
        state_dir=state_dir,
        include=tuple(src.resolve(p) for p in values.get("include", ())),
        **direct,
    )


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def _app_spec(
    src: configfile.Source, name: str, raw: object, daemon: DaemonSpec, profile: str | None
) -> AppSpec:
    def error(message: str, key: str | None = None, *sub: str) -> ConfigError:
        path = ("apps", name, key, *sub) if key else ("apps", name)
        return src.error(message, *path, app=name, key=key)

    if not isinstance(raw, dict):
        raise error(f"an app must be a table ([apps.{name}]), got {type_name(raw)}")
    problem = app_name_problem(name)
    if problem is not None:
        raise error(problem)

    values: dict[str, Any] = {}
    profile_env: dict[str, dict[str, str]] = {}
    for key, value in raw.items():
        found = schema.app_key(key)
        if found is None:
            raise error(f"unknown key {key!r}{_did_you_mean(key, schema.APP_KEYS)}", key)
        row, key_profile = found
        try:
            converted = schema.check(row, value)
        except ValueProblem as p:
            message = p.message
            if key_profile is not None and not isinstance(value, dict):
                message += _did_you_mean(key, schema.APP_KEYS)  # env_files = [...] is a typo
            raise error(message, key, *((p.subkey,) if p.subkey else ())) from None
        if key_profile is not None:
            assert isinstance(converted, dict)
            profile_env[key_profile] = converted
        else:
            values[key] = converted

    if "command" not in values:
        raise error("missing required key 'command'", "command")
    shell = bool(values.get("shell", False))
    command: str | tuple[str, ...] = values["command"]
    if shell:
        text = command if isinstance(command, str) else shlex.join(command)
        argv: tuple[str, ...] = ("/bin/sh", "-c", text)
    elif isinstance(command, str):
        try:
            argv = tuple(shlex.split(command))
        except ValueError as exc:
            raise error(f"cannot split the command line: {exc}", "command") from None
        if not argv:
            raise error("must not be empty", "command")
    else:
        argv = command

    cwd = src.resolve(values["cwd"]) if "cwd" in values else None
    base = cwd or src.dir  # relative env_file and watch paths; the file's dir without a cwd

    instances: int | str = values.get("instances", 1)
    if instances == "max":
        instances = _cpu_count()
    elif isinstance(instances, int) and instances < 0:
        instances = max(1, _cpu_count() + instances)
    assert isinstance(instances, int)

    env = dict(values.get("env", {}))
    for env_path in values.get("env_file", ()):
        env.update(_read_env_file(src, name, os.path.normpath(os.path.join(base, env_path))))
    if profile is not None:
        env.update(profile_env.get(profile, {}))

    def log_file(key: str, suffix: str) -> str | None:
        if key not in values:
            return os.path.join(daemon.log_dir, f"{name}-{suffix}.log")
        value = values[key]
        if value is None or value in LOG_TARGETS:  # discard, "-", "journal": not a file
            return value  # type: ignore[no-any-return]
        return os.path.normpath(os.path.join(daemon.log_dir, value))

    watch_value = values.get("watch", False)
    if watch_value is True:
        watch: tuple[str, ...] = (base,)
    elif watch_value is False:
        watch = ()
    else:
        watch = tuple(os.path.normpath(os.path.join(base, p)) for p in watch_value)

    listen: tuple[str, ...] = tuple(
        _absolute_unix(a, src.resolve) if a.startswith("unix:") else a
        for a in values.get("listen", ())
    )
    mode = values.get("exec_mode", ExecMode.FORK)
    if mode is ExecMode.CLUSTER and not listen:
        raise error('a cluster app needs "listen" (one or more addresses)', "listen")
    if mode is ExecMode.FORK:
        for key in ("listen", "balance"):
            if key in values:
                raise error(f'{key!r} is only used with exec_mode = "cluster"', key)
    # The contract's rule (WATCHDOG=1 comes over $NOTIFY_SOCKET), not a guard of the engine:
    # a missed heartbeat is an event on its queue like any other.
    if "heartbeat_timeout" in values and values.get("ready", "started") != "notify":
        raise error('heartbeat_timeout is only used with ready = "notify"', "heartbeat_timeout")

    if values.get("log_format") == "json" and "log_date_format" in values:
        raise error('log_date_format is not used with log_format = "json" (its "time" is ISO '
                    "8601)", "log_date_format")
    if "health" not in values:
        for key in ("health_interval", "health_timeout", "health_failures"):
            if key in values:
                raise error(f"{key!r} is only used with health", key)
    pidfile = None
    if "pidfile" in values:
        if mode is ExecMode.CLUSTER:
            raise error('pidfile is only used with exec_mode = "fork" (a cluster instance must '
                        "use the sockets it is handed, in the foreground)", "pidfile")
        if instances > 1:
            raise error("pidfile names one process: with instances > 1 the instances would "
                        "share it; define one app per instance", "pidfile")
        if not values["pidfile"]:
            raise error("must not be empty", "pidfile")
        pidfile = os.path.normpath(os.path.join(base, values["pidfile"]))

    direct = {k: values[k] for k in _DIRECT_FIELDS + _CGROUP_FIELDS if k in values}
    return AppSpec(
        name=name,
        command=argv,
        cwd=cwd,
        instances=instances,
        env=env,
        out_file=log_file("out_file", "out"),
        error_file=log_file("error_file", "error"),
        watch=watch,
        listen=listen,
        pidfile=pidfile,
        source=src.path,
        line=src.locator.table_line("apps", name),
        **direct,
    )


# -- env files --------------------------------------------------------------------------------


def _read_env_file(src: configfile.Source, app: str, path: str) -> dict[str, str]:
    """KEY=VALUE lines; `#` comments, blank lines, `export `, '...' or "..." values."""
    try:
        text = configfile.read_bytes(path)[0].decode("utf-8")
    except (configfile.Unreadable, UnicodeDecodeError) as exc:
        reason = str(exc) if isinstance(exc, configfile.Unreadable) else "not valid UTF-8"
        raise src.error(
            f"cannot read env file {path}: {reason}", "apps", app, "env_file", app=app,
            key="env_file",
        ) from None
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        try:
            parsed = parse_env_line(raw)
        except ValueError as exc:
            raise ConfigError(str(exc), file=path, line=number, app=app, key="env_file") from None
        if parsed is not None:
            out[parsed[0]] = parsed[1]
    return out


# -- describe ---------------------------------------------------------------------------------


def describe(desired: Desired) -> str:
    """The summary `procsupd --check` prints: the files, the active profile, one line per app."""
    daemon = desired.daemon
    lines = [f"config: {daemon.config_path}"]
    lines.extend(f"include: {f}" for f in desired.files[1:])
    lines.append(f"profile: {desired.profile or '(none)'}")
    lines.append(f"socket: {daemon.socket}")
    lines.append(f"apps: {len(desired.apps)}")
    width = max((len(n) for n in desired.apps), default=0)
    for name, app in desired.apps.items():
        command = app.command[2] if app.shell else shlex.join(app.command)
        count = f"{app.instances} instance" + ("" if app.instances == 1 else "s")
        lines.append(f"  {name:<{width}}  {count:<12} {app.exec_mode.value:<7}  {command}")
    return "\n".join(lines) + "\n"


def _absolute_unix(address: str, resolve: Callable[[str], str]) -> str:
    """A unix listen address with its path made absolute (relative to the defining file)."""
    path, mode = units.split_unix_listen(address)
    suffix = f"?mode={units.format_mode(mode)}" if mode is not None else ""
    return "unix:" + resolve(path) + suffix
