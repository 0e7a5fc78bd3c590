#!/usr/bin/env bash
# Runs a command inside the cached Debian 13 + PoCL 6 root (.ci/pocl-root.sh builds it), in the same
# working directory, with the host's dotnet, NuGet cache and work tree at the same absolute paths.
#
#   .ci/in-pocl.sh dotnet test CopaKernels.sln -c Release
#
# Mounts: /proc (fresh), /dev and /sys (recursive binds), /etc/resolv.conf, /etc/hosts and the host's
# CA store /etc/ssl/certs (read-only; COPA_POCL_HOST_CERTS=0 to keep the root's own),
# and at their own paths: the dotnet folder (readlink -f of `dotnet`), ~/.nuget ($NUGET_PACKAGES too,
# if set), the work tree (this script's ../), /tmp ($TMPDIR too, if set), and each folder listed in
# $COPA_POCL_BINDS (colon-separated). The caller's cwd must lie in one of them.
#
# The mounts live in a private mount namespace with its own PID namespace (unshare), so they are
# never visible on the host and can never be left behind: they vanish with the namespace even if
# this script is killed with SIGKILL. It still unmounts them itself on exit (trap), after stopping
# any process the command left behind (e.g. build servers), so no straggler keeps a pipe open.
# Mounts already present under the root (leftovers of manual work) are unmounted on the host first.
#
# Environment: the caller's, passed through (DOTNET_*, NUGET_*, REQUIRE_OPENCL, CI, proxies, ...),
# with PATH=<dotnet folder>:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin and
# DOTNET_ROOT=<dotnet folder>. Exit status: the command's (128+N if it died of signal N).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=${COPA_POCL_ROOT:-/var/cache/copakernels/trixie-pocl}
ROOT=${ROOT%/}

die() { echo "in-pocl: error: $*" >&2; exit 1; }

mounts_under() { # mount points at or below $1 in this namespace, deepest first
  awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

if [[ ${COPA_POCL_INNER:-} != 1 ]]; then
  # ---- Outside: checks, then re-run this script as PID 1 of new mount + PID namespaces. ----
  (($# > 0)) || die "usage: $0 COMMAND [ARGS...]"
  [[ $EUID -eq 0 ]] || die "must run as root (mount and chroot need it)"
  if [[ ${COPA_POCL_BUILDING:-} != 1 ]]; then
    COPA_POCL_QUIET=1 "$here/pocl-root.sh" >&2 || die "the PoCL root $ROOT is not available (see above)"
  fi
  [[ -x $ROOT/bin/sh ]] || die "no usable root at $ROOT (run .ci/pocl-root.sh)"
  command -v unshare >/dev/null || die "unshare (util-linux) is required"

  dotnet_bin=$(command -v dotnet) || die "dotnet is not on PATH"
  dotnet_dir=$(dirname "$(readlink -f "$dotnet_bin")")
  work_tree=$(cd "$here/.." && pwd -P)
  home=${HOME:-/root}
  mkdir -p "$home/.nuget/packages"   # so a restore inside fills the host's cache
  binds=("$dotnet_dir" "$home/.nuget" "$work_tree" /tmp)
  [[ -n ${NUGET_PACKAGES:-} ]] && mkdir -p "$NUGET_PACKAGES" && binds+=("$NUGET_PACKAGES")
  [[ -n ${TMPDIR:-} && -d ${TMPDIR:-} ]] && binds+=("$TMPDIR")
  if [[ -n ${COPA_POCL_BINDS:-} ]]; then
    IFS=: read -r -a extra <<<"$COPA_POCL_BINDS"
    binds+=("${extra[@]}")
  fi
  list=""
  for b in "${binds[@]}"; do
    [[ -n $b ]] || continue
    [[ -d $b ]] || die "cannot bind $b into the root: not a directory"
    b=$(cd "$b" && pwd -P)
    [[ $b != / && $b != "$ROOT" && $b != "$ROOT"/* && $ROOT != "$b"/* ]] || die "cannot bind $b into the root $ROOT"
    list+="$b"$'\n'
  done
  cwd=$(pwd -P)
  covered=0
  while read -r b; do [[ -n $b && ( $cwd == "$b" || $cwd == "$b"/* ) ]] && covered=1; done <<<"$list"
  ((covered)) || die "the current directory $cwd is not inside a folder bound into the root (add it to COPA_POCL_BINDS)"

  leftovers=$(mounts_under "$ROOT")
  if [[ -n $leftovers ]]; then
    while read -r m; do
      echo "in-pocl: unmounting leftover mount $m" >&2
      umount -R "$m" 2>/dev/null || umount -l "$m" || die "cannot unmount the leftover mount $m"
    done <<<"$leftovers"
  fi

  [[ -e /dev/fd/0 ]] || exec 0</dev/null   # a closed stdin would break the 0<&0 below

  export COPA_POCL_INNER=1 COPA_POCL_ROOT=$ROOT COPA_POCL_CWD=$cwd COPA_POCL_DOTNET_DIR=$dotnet_dir \
    COPA_POCL_BIND_LIST=$list
  # unshare --fork ignores SIGINT/SIGTERM while it waits, so this shell stays in front and passes a
  # signal on to the namespace's PID 1 (the inner half below); --kill-child covers unshare dying.
  unshare --mount --propagation private --pid --fork --mount-proc --kill-child=SIGTERM -- \
    /bin/bash "$here/in-pocl.sh" "$@" 0<&0 &
  upid=$!
  got=0
  forward() { got=$1; pkill -TERM -P "$upid" 2>/dev/null || kill -TERM "$upid" 2>/dev/null || true; }
  trap 'forward 2' INT
  trap 'forward 15' TERM
  trap 'forward 1' HUP
  trap 'forward 3' QUIT
  while :; do
    set +e
    wait "$upid"
    status=$?
    set -e
    kill -0 "$upid" 2>/dev/null || break   # wait was only interrupted by a signal
  done
  ((got == 0)) || exit $((128 + got))
  exit "$status"
fi

# ---- Inside: PID 1 of the new namespaces. ----
unset COPA_POCL_INNER
mounted=()
child=""

others_alive() { # any process of this PID namespace besides this shell (PID 1)?
  local p
  for p in /proc/[0-9]*; do
    [[ ${p#/proc/} == 1 || ${p#/proc/} == "$BASHPID" ]] || return 0
  done
  return 1
}
stop_all() { # stops every other process of this PID namespace: TERM, up to 5 s, then KILL
  local i
  others_alive || return 0
  kill -TERM -1 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    others_alive || return 0
    sleep 0.1
  done
  kill -KILL -1 2>/dev/null || true
  sleep 0.2
}
cleanup() {
  local i
  trap '' INT TERM HUP QUIT
  trap - EXIT
  stop_all
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount -R "${mounted[i]}" 2>/dev/null || umount -l "${mounted[i]}" 2>/dev/null \
      || echo "in-pocl: warning: cannot unmount ${mounted[i]}" >&2
  done
}
on_signal() { # $1: signal number
  echo "in-pocl: signal $1, stopping the command" >&2
  cleanup
  exit $((128 + $1))
}
trap cleanup EXIT
trap 'on_signal 2' INT
trap 'on_signal 15' TERM
trap 'on_signal 1' HUP
trap 'on_signal 3' QUIT

do_mount() { # do_mount TARGET_IN_ROOT MOUNT_ARGS... ; TARGET is a path inside the root
  local target=$ROOT$1
  shift
  [[ -L $target ]] && die "mount point $target is a symbolic link"
  if mountpoint -q "$target"; then  # copied from the host namespace; drop it here only
    umount -R "$target" 2>/dev/null || umount -l "$target"
  fi
  mount "$@" "$target" || die "mount $* $target failed"
  mounted+=("$target")
}
ensure_dir() { [[ -L $ROOT$1 ]] && die "$ROOT$1 is a symbolic link"; mkdir -p "$ROOT$1"; }
ensure_file() { [[ -L $ROOT$1 ]] && rm -f "$ROOT$1"; [[ -e $ROOT$1 ]] || : >"$ROOT$1"; }

ensure_dir /proc; do_mount /proc -t proc proc
ensure_dir /sys;  do_mount /sys --rbind /sys
ensure_dir /dev;  do_mount /dev --rbind /dev
for f in /etc/resolv.conf /etc/hosts; do
  if [[ -e $f ]]; then
    ensure_file "$f"
    do_mount "$f" --bind "$(readlink -f "$f")"
    mount -o remount,bind,ro "$ROOT$f" 2>/dev/null || true
  fi
done
# The host's trust store, so that NuGet over HTTPS trusts what the host trusts (a TLS-inspecting
# proxy's CA from /usr/local/share/ca-certificates, say). COPA_POCL_HOST_CERTS=0 keeps the root's own.
if [[ ${COPA_POCL_HOST_CERTS:-1} != 0 && -f /etc/ssl/certs/ca-certificates.crt ]]; then
  ensure_dir /etc/ssl/certs
  do_mount /etc/ssl/certs --bind /etc/ssl/certs
  mount -o remount,bind,ro "$ROOT/etc/ssl/certs" 2>/dev/null || true
fi
# Same-path binds, parents before children.
while read -r b; do
  [[ -n $b ]] || continue
  ensure_dir "$b"
  do_mount "$b" --bind "$b"
done < <(printf '%s' "$COPA_POCL_BIND_LIST" | awk 'NF { print length($0) "\t" $0 }' | sort -n -s | cut -f2- | uniq)
ensure_dir "${HOME:-/root}"

path="$COPA_POCL_DOTNET_DIR:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
cwd=$COPA_POCL_CWD
unset COPA_POCL_CWD COPA_POCL_BIND_LIST
# Background + wait, so that a signal reaches the trap at once; 0<&0 keeps the caller's stdin.
PATH=$path DOTNET_ROOT=$COPA_POCL_DOTNET_DIR chroot "$ROOT" /bin/sh -c 'cd "$1" && shift && exec "$@"' \
  in-pocl "$cwd" "$@" 0<&0 &
child=$!
set +e
wait "$child"
status=$?
set -e
exit "$status"
