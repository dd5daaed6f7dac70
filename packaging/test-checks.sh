# Shared by packaging/test-in-root and packaging/test-in-systemd (sourced, POSIX sh, in the
# root or the container where the package is installed): the "ok - / skip - / FAIL -" lines
# and ways to look at processes and instances without procps.
passed=0
skipped=0

ok() { passed=$((passed + 1)); echo "ok - $*"; }
# A check that cannot be made here: said, and not counted as a pass.
skip() { skipped=$((skipped + 1)); echo "skip - $*"; }
# The first failure ends the script.
fail() { echo "FAIL - $*" >&2; echo "$passed passed, $skipped skipped, 1 failed"; exit 1; }
# The last line of a script that got to its end.
summary() { echo "$passed passed, $skipped skipped, 0 failed"; }

# Pids of live processes whose name is $1 (no procps in a minimal root; zombies skipped).
pids_named() {
	for d in /proc/[0-9]*; do
		[ "$(cat "$d/comm" 2>/dev/null)" = "$1" ] || continue
		state=$(sed 's/.*) \(.\).*/\1/' "$d/stat" 2>/dev/null) || continue
		[ "$state" = Z ] || echo "${d#/proc/}"
	done
}
count_named() { pids_named "$1" | wc -l; }

# Wait (at most 10 s) until every instance of app $1 is running; print its states.
wait_running() {
	i=0
	while [ $i -lt 100 ]; do
		states=$(state_of "$1")
		case $states in *running*) ! echo "$states" | grep -qv running && break ;; esac
		sleep 0.1
		i=$((i + 1))
	done
	echo "$states"
}

# The states of app $1's instances as `procsup status --json` gives them, one per line.
state_of() { instances_of "$1" state; }

# Field $2 (state, pid, ...) of app $1's instances in `procsup status --json`, one per line
# ("absent" when the app has none).
instances_of() {
	procsup status --json | python3 -c '
import json, sys
app, key = sys.argv[1:]
rows = [i for i in json.load(sys.stdin)["instances"] if i["app"] == app]
print("\n".join(str(i[key]) for i in rows) if rows else "absent")' "$1" "$2"
}
