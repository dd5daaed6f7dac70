# Shared by packaging/test-packages and packaging/test-systemd (sourced, not run): root check,
# step timings, host packages, and a throwaway Debian 12 root from this machine's apt mirror.
# The caller sets `work` (its scratch directory) before calling need_packages or make_root.

# require_root NAME: both scripts use apt-get, debootstrap, chroot and namespaces.
require_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "$1: needs root (apt-get, debootstrap, chroot, namespaces)" >&2
        exit 2
    fi
}

t0=$SECONDS
# step TEXT: a heading with the seconds since the script started.
step() { printf '== %s (%ss)\n' "$*" "$((SECONDS - t0))"; }

# need_packages PKG...: apt-get install (quietly) those that are not installed yet.
need_packages() {
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$p")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >"$work/apt.log" 2>&1 || { cat "$work/apt.log" >&2; return 1; }
}

# apt_mirror: the first Debian mirror this machine's apt uses (deb822 sources, else sources.list).
apt_mirror() {
    local mirror
    mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
    [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
    [ -n "$mirror" ] || { echo "no apt mirror found in /etc/apt" >&2; return 1; }
    echo "$mirror"
}

# make_root ROOT CACHE [DEBOOTSTRAP-OPTION...]: a minimal Debian 12 root at ROOT
# (debootstrap --variant=minbase plus the options). CACHE, when not empty, is a tarball kept
# between runs: unpacked if it exists, else written after the debootstrap. A cache belongs to
# one set of options: give each caller its own file.
make_root() {
    local root=$1 cache=$2 mirror
    shift 2
    if [ -n "$cache" ] && [ -s "$cache" ]; then
        mkdir "$root" && tar -xf "$cache" -C "$root"
    else
        mirror=$(apt_mirror)
        debootstrap --variant=minbase "$@" bookworm "$root" "$mirror" \
            >"$work/debootstrap.log" 2>&1 || { tail -30 "$work/debootstrap.log" >&2; return 1; }
        [ -z "$cache" ] || tar -cf "$cache" -C "$root" .
    fi
    cp /etc/resolv.conf "$root/etc/resolv.conf"
}

# policy_rc_d ROOT CODE: what invoke-rc.d (and deb-systemd-invoke) in ROOT may do to services:
# 0 allows starting them, 101 forbids it (policy-rc.d(8)).
policy_rc_d() {
    printf '#!/bin/sh\nexit %s\n' "$2" >"$1/usr/sbin/policy-rc.d"
    chmod 755 "$1/usr/sbin/policy-rc.d"
}

# in_root ROOT COMMAND...: COMMAND chrooted into ROOT, in its own mount and pid namespaces
# (with /dev, a fresh /proc, /run and /tmp): the mounts and every process it leaves die with
# the namespace, nothing is mounted on the host afterwards.
in_root() {
    local root=$1
    shift
    unshare --mount --pid --fork --mount-proc="$root/proc" sh -c '
        set -e
        root=$1
        shift
        mount --rbind /dev "$root/dev"
        mount -t tmpfs tmpfs "$root/run"
        mount -t tmpfs tmpfs "$root/tmp"
        exec chroot "$root" "$@"
    ' sh "$root" "$@"
}
