"""`procsup import pm2 FILE`: a PM2 ecosystem file -> procsup TOML (layer 1, pure).

Reads `.json` and `.js`/`.cjs` with `jsobject` (PM2 itself evaluates `.json` ecosystems as
JavaScript, so comments and trailing commas are read there too) and `.yaml`/`.yml` with
PyYAML. What each PM2 option becomes is listed in docs/migrating.md; the rules that need a
decision:

- Paths: an app's `cwd` is resolved against the ecosystem file's directory (PM2 resolves it
  against the directory `pm2 start` runs in, which is that one in the usual
  `pm2 start ecosystem.config.js`) and always written, absolute; `out_file`/`error_file`
  relative to that cwd are written absolute.
- The command: `interpreter [interpreter_args] script [args]`; without `interpreter` the
  script's extension picks it as PM2 does (.js -> node, .py -> python3, .sh -> bash, ...); a
  bare name that is no file in cwd (`npm`, `sleep`) runs from PATH; a script with a space runs
  through the shell, as PM2 does with bash -c.
- Cluster mode: PM2's node cluster module lets each worker bind the port; procsup's daemon binds
  it. A cluster app (or one with `instances` but no `exec_mode`, which PM2 runs in cluster mode)
  gets `listen = ["tcp://0.0.0.0:PORT"]` from `env.PORT` and a note that it must listen on fd 3;
  without PORT it becomes a fork app, with a note.
- `autostart: false` becomes `instances = 0` (start it with `procsup scale APP N`).

Imports only layer 0, `schema`, `values` and the package's own modules.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping

from procsup import values
from procsup.errors import ConfigError
from procsup.importers import (
    NAME_RULES,
    AppTable,
    Files,
    Note,
    Result,
    app_name,
    is_device,
    jsobject,
    read,
    render,
)

#: Interpreters PM2 picks from the script's extension when `interpreter` is absent.
EXTENSION_INTERPRETERS = {
    ".js": "node", ".cjs": "node", ".mjs": "node", ".py": "python3", ".sh": "bash",
    ".rb": "ruby", ".php": "php", ".pl": "perl", ".coffee": "coffee", ".ts": "ts-node",
    ".ls": "lsc",
}

#: PM2 aliases -> the canonical option name used below.
ALIASES = {
    "exec_interpreter": "interpreter", "node_args": "interpreter_args",
    "output": "out_file", "out": "out_file", "out_log": "out_file",
    "error": "error_file", "err": "error_file", "err_file": "error_file",
    "err_log": "error_file", "log": "log_file", "combine_logs": "merge_logs",
    "uid": "user", "gid": "group",
}

#: PM2 options with no procsup equivalent, and why (anything else unknown gets a generic note).
NO_EQUIVALENT = {
    "wait_ready": "PM2 waits for process.send('ready') over its IPC channel, which procsup "
                  "does not have; procsup's equivalent is ready = \"notify\": send READY=1 to "
                  "$NOTIFY_SOCKET (sd_notify), then set it",
    "listen_timeout": "PM2 gives up waiting for 'listening'/'ready' and counts the app as "
                      "ready anyway; procsup's ready_timeout instead fails a reload whose "
                      "replacement is not ready (ready = \"started\" needs only min_uptime)",
    "shutdown_with_message": "procsup stops apps with kill_signal only",
    "kill_retry_time": "procsup sends kill_signal once, then SIGKILL after kill_timeout",
    "instance_var": "procsup gives each instance PROCSUP_INSTANCE (0..n-1) instead",
    "increment_var": "no per-instance variable arithmetic in procsup; use PROCSUP_INSTANCE",
    "namespace": "procsup has no namespaces; every app is addressed by its name",
    "watch_options": "procsup's watch has no chokidar options",
    "watch_delay": "procsup debounces file changes itself (about 0.5 s)",
    "source_map_support": "a Node option PM2 injects; pass --enable-source-maps in "
                          "interpreter_args instead",
    "vizion": "procsup tracks no version-control metadata",
    "post_update": "procsup does not pull or update apps",
    "pid_file": "procsup records instances in state_dir; it writes no pid file per app",
    "filter_env": "procsup passes its whole environment (inherit_env = false keeps only PATH, "
                  "LANG, HOME, USER, LOGNAME)",
    "append_env_to_name": "procsup app names do not change with the profile",
    "force": "procsup never starts an app twice",
    "log_type": "procsup writes plain text lines (log_date_format adds a date)",
    "pmx": "no PM2.io monitoring in procsup",
    "automation": "no PM2.io monitoring in procsup",
    "trace": "no PM2.io monitoring in procsup",
    "disable_trace": "no PM2.io monitoring in procsup",
    "deep_monitoring": "no PM2.io monitoring in procsup",
    "vizion_running": "procsup tracks no version-control metadata",
}

_DATE_TOKENS = (  # moment.js format tokens -> strftime, longest first
    ("YYYY", "%Y"), ("YY", "%y"), ("MMMM", "%B"), ("MMM", "%b"), ("MM", "%m"), ("M", "%-m"),
    ("DDDD", "%j"), ("DD", "%d"), ("Do", None), ("D", "%-d"), ("dddd", "%A"), ("ddd", "%a"),
    ("dd", None), ("d", "%w"), ("HH", "%H"), ("H", "%-H"), ("hh", "%I"), ("h", "%-I"),
    ("mm", "%M"), ("m", "%-M"), ("ss", "%S"), ("s", "%-S"), ("SSSSSS", "%f"), ("SSS", "%f"),
    ("SS", "%f"), ("S", "%f"), ("ZZ", "%z"), ("Z", "%z"), ("A", "%p"), ("a", "%p"),
    ("X", "%s"), ("x", None), ("ww", "%U"), ("w", None), ("E", "%u"), ("e", "%w"),
    ("Q", None), ("GGGG", "%G"), ("WW", "%V"), ("W", None), ("k", None), ("N", None),
)


def convert(path: str, files: Files, environ: Mapping[str, str]) -> Result:
    """The procsup TOML for the PM2 ecosystem at `path` (absolute), read through `files`.

    `environ` supplies HOME for `~` in paths. Raises ConfigError (with file:line where known)
    for a file that cannot be read or parsed, or an option value that cannot be translated.
    """
    text = read(files, path)
    data = load(path, text)
    notes: list[Note] = []
    if isinstance(data, list):
        raw_apps: list[object] = data
    elif isinstance(data, dict) and "apps" in data:
        apps_value = data["apps"]
        raw_apps = apps_value if isinstance(apps_value, list) else [apps_value]
        for key in data:
            if key == "deploy":
                notes.append(Note(path, None, "deploy", "pm2 deploy has no procsup equivalent "
                                  "(deploy with your own tools, then `procsup update`)"))
            elif key != "apps":
                notes.append(Note(path, None, key, "unknown top-level key of the ecosystem"))
    elif isinstance(data, dict) and "script" in data:
        raw_apps = [data]
    else:
        raise ConfigError('expected an object with "apps" (a list of apps), or a list of apps',
                          file=path)
    if not raw_apps:
        raise ConfigError("the ecosystem defines no apps", file=path)
    taken: set[str] = set()
    apps: dict[str, dict[str, object]] = {}
    for i, raw in enumerate(raw_apps):
        if not isinstance(raw, dict):
            raise ConfigError(f"app #{i + 1}: expected an object, got {_kind(raw)}", file=path)
        name, table = _App(path, raw, files=files, environ=environ, notes=notes,
                           taken=taken).convert()
        apps[name] = table
    return render("pm2", path, {}, apps, notes)


def load(path: str, text: str) -> object:
    """Parse an ecosystem by its extension: YAML for .yaml/.yml, JavaScript (or JSON) else."""
    if path.endswith((".yaml", ".yml")):
        import yaml  # lazily: only this format needs PyYAML

        try:
            return yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else None
            raise ConfigError(f"YAML syntax error: {exc.problem or exc}", file=path,
                              line=line) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"YAML syntax error: {exc}", file=path) from None
    return jsobject.parse(text, path, os.path.dirname(path))


def moment_to_strftime(fmt: str) -> tuple[str, list[str]]:
    """A moment.js date format (PM2's log_date_format) -> (strftime format, tokens that have no
    strftime equivalent and were left out). `[text]` is literal; other letters that are not
    tokens stay as they are, as in moment."""
    out: list[str] = []
    lost: list[str] = []
    i = 0
    while i < len(fmt):
        if fmt[i] == "[":
            end = fmt.find("]", i)
            if end != -1:
                out.append(fmt[i + 1 : end].replace("%", "%%"))
                i = end + 1
                continue
        for token, strf in _DATE_TOKENS:
            if fmt.startswith(token, i):
                if strf is None:
                    lost.append(token)
                else:
                    out.append(strf)
                i += len(token)
                break
        else:
            out.append("%%" if fmt[i] == "%" else fmt[i])
            i += 1
    return "".join(out), lost


class _App(AppTable):
    """One PM2 app: its options in, (procsup name, procsup table) out; notes appended."""

    def __init__(self, path: str, raw: dict[str, object], *, files: Files,
                 environ: Mapping[str, str], notes: list[Note], taken: set[str]) -> None:
        self.path = path
        self.files = files
        self.environ = environ
        self.notes = notes
        self.taken = taken
        self.opts: dict[str, tuple[str, object]] = {}  # canonical key -> (source key, value)
        for key, value in raw.items():
            canonical = ALIASES.get(key, key)
            self.opts[canonical] = (key, value)
        self.name = str(raw.get("name", "?"))
        self.out: dict[str, object] = {}
        self.interpreter: str | None = None  # set by command(): "none" = run the script itself

    # -- helpers -----------------------------------------------------------------------------

    def note(self, key: str, message: str) -> None:
        self.notes.append(Note(self.path, self.name, self.source_key(key), message))

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, file=self.path, app=self.name, key=self.source_key(key))

    def source_key(self, key: str) -> str:
        return self.opts[key][0] if key in self.opts else key

    def take(self, key: str) -> object:
        """The value of option `key` (by canonical name), removed from the pending options."""
        return self.opts.pop(key)[1] if key in self.opts else None

    def string(self, key: str, value: object) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"expected a non-empty string, got {_kind(value)}")
        return value

    def words(self, key: str, value: object) -> list[str]:
        """args / interpreter_args: a string split like a shell, or an array of scalars."""
        if value is None:
            return []
        if isinstance(value, str):
            try:
                return shlex.split(value)
            except ValueError as exc:
                raise self.fail(key, f"cannot split {value!r}: {exc}") from None
        if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
            return [_js_text(v) for v in value]
        raise self.fail(key, f"expected a string or an array of strings, got {_kind(value)}")

    def duration(self, key: str, procsup_key: str | None = None) -> None:
        value = self.take(key)
        if value is None:
            return
        if isinstance(value, float) and value == int(value):
            value = int(value)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)  # PM2 reads "3000" as 3000 ms
        self.checked(key, procsup_key or key, value)

    def home(self, path: str) -> str:
        if path == "~" or path.startswith("~/"):
            home = self.environ.get("HOME")
            if home:
                return home + path[1:]
        return path

    # -- the conversion ----------------------------------------------------------------------

    def convert(self) -> tuple[str, dict[str, object]]:
        raw_script = self.take("script")
        if raw_script is None:
            raise ConfigError("missing 'script'", file=self.path,
                              app=self.name if "name" in self.opts else None, key="script")
        wanted = self.take("name")
        script = self.string("script", raw_script)
        if wanted is None:
            wanted = os.path.splitext(os.path.basename(script.split()[0]))[0] or "app"
        wanted = _js_text(wanted)
        self.name = app_name(wanted, self.taken)
        if self.name != wanted:
            self.note("name", f"renamed {wanted!r} to {self.name!r} ({NAME_RULES})")

        cwd_value = self.take("cwd")
        base = os.path.dirname(self.path)
        cwd = base if cwd_value is None else os.path.normpath(
            os.path.join(base, self.home(self.string("cwd", cwd_value))))
        self.command(script, cwd)
        self.out["cwd"] = cwd
        self.instances_and_mode()
        self.environment()
        self.logs(cwd)
        self.restarts()
        self.others()
        for key, (source_key, _value) in self.opts.items():
            reason = NO_EQUIVALENT.get(key, "not a PM2 option procsup knows; not imported")
            self.notes.append(Note(self.path, self.name, source_key, reason))
        return self.name, self.out

    def command(self, script: str, cwd: str) -> None:
        interpreter_value = self.take("interpreter")
        interpreter = None if interpreter_value is None else self.string("interpreter",
                                                                         interpreter_value)
        interpreter_args = self.words("interpreter_args", self.take("interpreter_args"))
        args = self.words("args", self.take("args"))
        self.interpreter = interpreter
        if interpreter is None and re.search(r"\s", script.strip()) and not self.files.is_file(
            os.path.join(cwd, script)
        ):
            # PM2 runs a script with spaces ("npm run start") through bash -c, dropping args.
            self.out["command"] = script.strip()
            self.out["shell"] = True
            self.interpreter = "sh"
            if args:
                self.note("args", "PM2 ignores args when script is a command line with spaces "
                          "(it runs it with bash -c); so does this import")
            return
        if interpreter is None:
            ext = os.path.splitext(script)[1].lower()
            interpreter = EXTENSION_INTERPRETERS.get(ext)
            if ext == ".py":
                self.note("script", "PM2 runs .py scripts with `python`; imported with "
                          "`python3` (set interpreter to choose)")
            elif interpreter is None:
                interpreter = "none"
                # A bare name that is no file in cwd is a program from PATH (npm, sleep), as
                # PM2 finds it; anything else is a file of unknown kind.
                if "/" in script or self.files.is_file(os.path.join(cwd, script)):
                    if "/" not in script:
                        script = "./" + script
                    self.note("script", "PM2 picks node for a text file without a known "
                              "extension (and runs a binary directly); procsup runs the file "
                              "directly, so it needs the exec bit and a #! line; set "
                              "interpreter to choose")
        assert interpreter is not None
        self.interpreter = interpreter
        if interpreter == "none":
            argv = [script, *args]
            if interpreter_args:
                self.note("interpreter_args", "ignored with interpreter 'none', as PM2 does")
        else:
            argv = [interpreter, *interpreter_args, script, *args]
        self.out["command"] = shlex.join(argv)

    def instances_and_mode(self) -> None:
        value = self.take("instances")
        instances: int | str | None = None
        if value is not None:
            if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
                value = int(value)
            if isinstance(value, float) and value == int(value):
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise self.fail("instances", f'expected an integer or "max", got {_kind(value)}')
            if isinstance(value, str):
                if value.strip() != "max":
                    raise self.fail("instances", f'expected an integer or "max", got {value!r}')
                instances = "max"
            else:
                instances = "max" if value == 0 else value  # PM2: 0 = every CPU, like "max"
        mode_value = self.take("exec_mode")
        if mode_value is None:
            # PM2 runs an app with `instances` in cluster mode when exec_mode is absent.
            cluster = instances is not None and instances != 1
            why = " (PM2 runs an app with instances in cluster mode when exec_mode is absent)"
        else:
            mode = self.string("exec_mode", mode_value).removesuffix("_mode")
            if mode not in ("fork", "cluster"):
                raise self.fail("exec_mode", f'expected "fork" or "cluster", got {mode_value!r}')
            cluster, why = mode == "cluster", ""
        if cluster and self.interpreter not in ("node", "nodejs") and not (
            self.interpreter and os.path.basename(self.interpreter) in ("node", "nodejs")
        ):
            self.note("exec_mode", "PM2 runs only node apps in cluster mode (it switches others "
                      "to fork mode); imported as a fork app")
            cluster = False
        if instances is not None:
            self.out["instances"] = instances
        if self.take("autostart") is False:
            self.note("autostart", "procsup starts every configured instance; imported as "
                      f"instances = 0 (was {instances if instances is not None else 1}): "
                      "start it with `procsup scale APP N` (until the next config apply)")
            self.out["instances"] = 0
        if not cluster:
            return
        env = self.opts.get("env", ("env", None))[1]
        port = env.get("PORT") if isinstance(env, dict) else None
        if isinstance(port, str) and port.strip().isdigit():
            port = int(port)
        if isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535:
            self.out["exec_mode"] = "cluster"
            self.out["listen"] = [f"tcp://0.0.0.0:{port}"]
            self.note("exec_mode", f"cluster app{why}: PM2's workers bind port {port} "
                      "themselves; procsupd binds tcp://0.0.0.0:"
                      f"{port} and hands it to every instance as fd 3 (LISTEN_FDS), so the "
                      "app must be changed to listen on fd 3, e.g. server.listen({fd: 3}) "
                      "when LISTEN_FDS is set (docs/cluster.md)")
        else:
            self.note("exec_mode", f"cluster app{why} without a port in env.PORT: imported "
                      "as a fork app; procsup's cluster mode needs listen addresses (add "
                      "exec_mode = \"cluster\" and listen, see docs/cluster.md)")

    def environment(self) -> None:
        env_value = self.take("env")
        if env_value is not None:
            self.out["env"] = self.env_table("env", env_value)
        for key in [k for k in self.opts if k.startswith("env_")]:
            value = self.take(key)
            profile = key[len("env_"):]
            if key == "env_file" or not values.PROFILE_RE.match(profile):
                self.note(key, f"not imported: {profile!r} is not a procsup profile name "
                          "(letters, digits, '_', '-'), or env_file means something else")
                continue
            self.out[key] = self.env_table(key, value)
        port_base = self.out.get("env", {})
        assert isinstance(port_base, dict)
        if "listen" in self.out:
            for key, table in self.out.items():
                if (key.startswith("env_") and isinstance(table, dict) and "PORT" in table
                        and str(table["PORT"]) != str(port_base.get("PORT"))):
                    self.note(key, f"sets PORT={table['PORT']}, but listen cannot change with "
                              f"the profile: it uses env.PORT={port_base.get('PORT')}")

    def env_table(self, key: str, value: object) -> dict[str, object]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected an object, got {_kind(value)}")
        out: dict[str, object] = {}
        for name, item in value.items():
            if not values.ENV_NAME_RE.match(name):
                raise self.fail(key, f"invalid environment variable name {name!r}")
            if item is None:
                self.note(key, f"{name} is null: PM2 passes no value, nor does procsup")
            elif isinstance(item, bool | float):
                out[name] = _js_text(item)
            elif isinstance(item, str | int):
                out[name] = item
            else:
                out[name] = json.dumps(item)
                self.note(key, f"{name} is an {_kind(item)}: written as its JSON text")
        return out

    def logs(self, cwd: str) -> None:
        disabled = self.take("disable_logs") is True
        for key in ("out_file", "error_file"):
            value = self.take(key)
            if disabled:
                self.out[key] = False
                continue
            if value is None:
                continue
            if value is False:
                self.out[key] = False
                continue
            text = self.string(key, value)
            if text in ("/dev/null", "NULL"):
                self.out[key] = False
            else:
                self.out[key] = os.path.normpath(os.path.join(cwd, self.home(text)))
        log_file = self.take("log_file")
        if disabled:
            pass
        elif isinstance(log_file, str) and log_file.strip():
            combined = os.path.normpath(os.path.join(cwd, self.home(log_file)))
            if "out_file" not in self.out and "error_file" not in self.out:
                self.out["out_file"] = self.out["error_file"] = combined
                self.note("log_file", "PM2 writes this combined log besides the separate out "
                          "and error logs; procsup has no third file, so both streams go to "
                          "this one file only")
            else:
                self.note("log_file", "procsup writes no combined log besides out_file and "
                          "error_file (set both to one path for one file); not imported")
        elif log_file is not None and log_file is not False:
            self.note("log_file", "procsup writes no combined log besides out_file and "
                      "error_file; not imported")
        if self.out.get("instances", 1) != 1 and any(
                is_device(self.out.get(k)) for k in ("out_file", "error_file")):
            self.out["merge_logs"] = True  # /dev/stdout is shared, never suffixed with -<i>
        merge = self.take("merge_logs")
        if merge is not None:
            if not isinstance(merge, bool):
                raise self.fail("merge_logs", f"expected a boolean, got {_kind(merge)}")
            self.out["merge_logs"] = merge
        fmt = self.take("log_date_format")
        time_prefix = self.take("time")
        if fmt is not None:
            strf, lost = moment_to_strftime(self.string("log_date_format", fmt))
            if lost:
                self.note("log_date_format", f"moment.js token(s) {', '.join(lost)} have no "
                          f"strftime equivalent and were left out of {strf!r}")
            if "%f" in strf:
                self.note("log_date_format", "fractions of a second are written as "
                          "microseconds (%f, 6 digits)")
            self.checked("log_date_format", "log_date_format", strf)
        elif time_prefix is True:
            self.out["log_date_format"] = "%Y-%m-%dT%H:%M:%S"

    def restarts(self) -> None:
        autorestart = self.take("autorestart")
        if autorestart is not None:
            if not isinstance(autorestart, bool):
                raise self.fail("autorestart", f"expected a boolean, got {_kind(autorestart)}")
            self.out["autorestart"] = autorestart
        codes = self.take("stop_exit_codes")
        if codes is not None:
            code_list = codes if isinstance(codes, list) else [codes]
            if code_list == [0] and autorestart is not False:
                self.out["autorestart"] = "on-failure"
            else:
                self.note("stop_exit_codes", f"procsup treats only exit 0 as a clean stop "
                          f"(autorestart = \"on-failure\"); {codes!r} not imported")
        value = self.take("max_restarts")
        if value is not None:
            self.checked("max_restarts", "max_restarts", value)
        for key in ("min_uptime", "restart_delay", "exp_backoff_restart_delay", "kill_timeout"):
            self.duration(key)
        value = self.take("max_memory_restart")
        if value is not None:
            self.checked("max_memory_restart", "max_memory_restart", value)
        if self.take("treekill") is False:
            self.note("treekill", "procsup always signals the whole process group")

    def others(self) -> None:
        watch = self.take("watch")
        if watch is not None:
            if isinstance(watch, str):
                watch = [watch]
            self.checked("watch", "watch", watch)
        ignore = self.take("ignore_watch")
        if ignore is not None:
            self.checked("ignore_watch", "ignore_watch", ignore)
            patterns: list[object] = [ignore] if not isinstance(ignore, list) else ignore
            if any(re.search(r"[\\^$()|+{}]", str(p)) for p in patterns):
                self.note("ignore_watch", "procsup reads these as glob patterns; a regular "
                          "expression will not match as it did in PM2")
        cron = self.take("cron_restart")
        if cron is not None:
            text = self.string("cron_restart", cron).split()
            if len(text) == 6 and text[0] == "0":
                text = text[1:]  # PM2's optional seconds field, when it is a plain 0
            elif len(text) == 6:
                self.note("cron_restart", f"{cron!r} has a seconds field; procsup's cron has "
                          "minutes at the finest: not imported")
                text = []
            if text:
                self.checked("cron_restart", "cron_restart", " ".join(text))
        for key in ("user", "group"):
            value = self.take(key)
            if value is None:
                continue
            if isinstance(value, int) and not isinstance(value, bool):
                self.note(key, f"numeric id {value}: procsup needs a {key} name; not imported")
                continue
            self.checked(key, key, self.string(key, value))


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _js_text(value: object) -> str:
    """String(value) as Node writes it for the scalars found in ecosystems."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value == int(value):
        return str(int(value))
    return str(value)
