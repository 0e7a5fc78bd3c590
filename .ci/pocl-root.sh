#!/usr/bin/env bash
# Builds, once, a cached Debian 13 (trixie) root with PoCL 6 (the CPU OpenCL driver that can run
# ILGPU kernels; Debian 12's PoCL 3.1 cannot) for .ci/in-pocl.sh to chroot into.
#
#   .ci/pocl-root.sh          build the root if it is missing, incomplete or outdated; else a no-op
#                             (COPA_POCL_QUIET=1: say nothing when the root is already ready)
#
# Root:  $COPA_POCL_ROOT, default /var/cache/copakernels/trixie-pocl (outside the clone, so it
#        survives across clones and CI runs on the same machine).
# Stamp: $ROOT/.copa-pocl-ready, written last. A root without the stamp, or with a stamp for another
#        package list / script version, is rebuilt from scratch into $ROOT.new and swapped in.
# Mirror: the Debian mirror that apt on this host uses (override: $COPA_DEBIAN_MIRROR).
# Needs root (debootstrap, chroot, mount namespaces). Installs the `debootstrap` package if absent.
set -euo pipefail

SCRIPT_VERSION=1
SUITE=trixie
# What ILGPU + PoCL need (the -dev package provides the unversioned libOpenCL.so that ILGPU loads),
# what .NET needs at runtime on Debian 13 (Microsoft's list), and clinfo for diagnostics.
PACKAGES=(
  pocl-opencl-icd ocl-icd-libopencl1 ocl-icd-opencl-dev clinfo
  ca-certificates libicu76 libssl3t64 libstdc++6 libgcc-s1 zlib1g libgssapi-krb5-2 tzdata
)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=${COPA_POCL_ROOT:-/var/cache/copakernels/trixie-pocl}
ROOT=${ROOT%/}
STAMP_NAME=.copa-pocl-ready
want_stamp="copa-pocl-root v${SCRIPT_VERSION} suite=${SUITE} packages=${PACKAGES[*]}"

log() { echo "pocl-root: $*"; }
die() { echo "pocl-root: error: $*" >&2; exit 1; }

is_ready() { # $1: a root directory
  [[ -f $1/$STAMP_NAME ]] && [[ "$(head -n 1 "$1/$STAMP_NAME")" == "$want_stamp" ]]
}

if is_ready "$ROOT"; then
  [[ ${COPA_POCL_QUIET:-} == 1 ]] || log "cached root $ROOT is ready ($(sed -n 2p "$ROOT/$STAMP_NAME"))"
  exit 0
fi

[[ $EUID -eq 0 ]] || die "must run as root (debootstrap and chroot need it)"
[[ $ROOT == /* && $ROOT != / ]] || die "COPA_POCL_ROOT must be an absolute path other than /: '$ROOT'"
# in-pocl.sh binds /tmp, the work tree and ~/.nuget into the root; the root cannot lie inside them.
for b in /tmp "$(cd "$here/.." && pwd -P)" "${HOME:-/root}/.nuget"; do
  [[ $ROOT != "$b"/* ]] || die "COPA_POCL_ROOT=$ROOT lies inside $b, which in-pocl.sh binds into the root; choose another place"
done

start=$(date +%s)
mkdir -p "$(dirname "$ROOT")"
# One builder at a time; a second caller waits, then finds the root ready.
exec 9>"$ROOT.lock"
if ! flock -n 9; then
  log "another build of $ROOT is running; waiting for it"
  flock -w 3600 9 || die "timed out waiting for the lock $ROOT.lock"
fi
if is_ready "$ROOT"; then
  log "cached root $ROOT is ready ($(sed -n 2p "$ROOT/$STAMP_NAME"))"
  exit 0
fi

# Unmounts everything mounted at or below $1 in this mount namespace (deepest first). The scripts
# mount only inside private namespaces, so anything here is a leftover of some manual work; it must
# go before any rm -rf, which would otherwise descend into bind-mounted host folders (a bind mount of
# a folder of the same file system has the same st_dev, so --one-file-system does not stop it).
unmount_under() {
  local dir=$1 m
  local -a mounts=()
  while read -r m; do mounts+=("$m"); done < <(
    awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r)
  for m in "${mounts[@]}"; do
    log "unmounting leftover mount $m"
    umount -R "$m" 2>/dev/null || umount -l "$m" || die "cannot unmount $m"
  done
  if awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { f = 1 } END { exit !f }' /proc/self/mountinfo; then
    die "mounts remain below $dir; refusing to delete it"
  fi
}
remove_tree() {
  [[ -e $1 ]] || return 0
  unmount_under "$1"
  rm -rf --one-file-system "$1"
}

# The Debian mirror: $COPA_DEBIAN_MIRROR, else the one apt uses on this host (debian-mirror.sh).
. "$here/debian-mirror.sh"
mirror=$(debian_mirror)
buildlog="$ROOT.build.log"
: >"$buildlog"
fail() { # prints the tail of the build log, then dies
  echo "---- last lines of $buildlog ----" >&2
  tail -n 40 "$buildlog" >&2 || true
  die "$*"
}

apt_ready=0
host_apt_install() {
  if [[ $apt_ready == 0 ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >>"$buildlog" 2>&1 || fail "apt-get update failed on the host"
    apt_ready=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >>"$buildlog" 2>&1 \
    || fail "apt-get install $* failed on the host"
}

if ! command -v debootstrap >/dev/null; then
  log "installing debootstrap on the host"
  host_apt_install debootstrap
fi
[[ -e /usr/share/debootstrap/scripts/$SUITE ]] || host_apt_install debootstrap  # too old to know the suite
[[ -e /usr/share/debootstrap/scripts/$SUITE ]] || die "debootstrap $(dpkg-query -W -f '${Version}' debootstrap) does not know '$SUITE'"
# Bookworm's debian-archive-keyring (2023.3+deb12u1 and later) carries the trixie release keys.
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
if [[ ! -f /usr/share/keyrings/debian-archive-$SUITE-stable.gpg ]]; then
  log "the host's debian-archive-keyring lacks the $SUITE keys; upgrading it"
  host_apt_install debian-archive-keyring
  [[ -f /usr/share/keyrings/debian-archive-$SUITE-stable.gpg ]] \
    || die "debian-archive-keyring $(dpkg-query -W -f '${Version}' debian-archive-keyring) has no $SUITE keys"
fi

new="$ROOT.new"
remove_tree "$new"
remove_tree "$ROOT.old"
log "building $ROOT ($SUITE from $mirror; log: $buildlog)"

log "debootstrap --variant=minbase $SUITE ..."
debootstrap --variant=minbase --components=main --include=ca-certificates --keyring="$keyring" \
  "$SUITE" "$new" "$mirror" >>"$buildlog" 2>&1 || fail "debootstrap of $SUITE from $mirror failed"

# apt inside the new root resolves the dependencies (LLVM/Clang for PoCL) properly.
in_new() { chroot "$new" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
  DEBIAN_FRONTEND=noninteractive "$@"; }
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$new/etc/apt/apt.conf.d/90copa-no-recommends"
log "apt-get install ${PACKAGES[*]}"
in_new apt-get update -qq >>"$buildlog" 2>&1 || fail "apt-get update in the $SUITE root failed"
in_new apt-get install -y -qq "${PACKAGES[@]}" >>"$buildlog" 2>&1 || fail "apt-get install in the $SUITE root failed"
in_new apt-get clean >>"$buildlog" 2>&1
rm -rf "$new"/var/lib/apt/lists/* "$new"/var/cache/apt/*.bin

# Sanity checks: what ILGPU dlopens, the PoCL ICD, then OpenCL and dotnet inside the root.
[[ -n $(in_new sh -c 'ls /usr/lib/*/libOpenCL.so 2>/dev/null') ]] || fail "no unversioned libOpenCL.so in the root"
[[ -f $new/etc/OpenCL/vendors/pocl.icd ]] || fail "no PoCL ICD (/etc/OpenCL/vendors/pocl.icd) in the root"
pocl_version=$(in_new dpkg-query -W -f '${Version}' libpocl2t64 2>/dev/null || in_new dpkg-query -W -f '${Version}' pocl-opencl-icd)
log "checking OpenCL and dotnet inside the root"
(cd /tmp && COPA_POCL_ROOT=$new COPA_POCL_BUILDING=1 "$here/in-pocl.sh" clinfo -l) >>"$buildlog" 2>&1 \
  || fail "clinfo -l failed inside the root"
grep -qi 'platform.*portable computing language' "$buildlog" || fail "clinfo lists no PoCL platform"
(cd /tmp && COPA_POCL_ROOT=$new COPA_POCL_BUILDING=1 "$here/in-pocl.sh" dotnet --info) >>"$buildlog" 2>&1 \
  || fail "dotnet --info failed inside the root"

elapsed=$(( $(date +%s) - start ))
# The stamp goes last: only a complete, checked root has it.
printf '%s\nPoCL %s, built %s in %ds\n' "$want_stamp" "$pocl_version" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$elapsed" \
  >"$new/$STAMP_NAME"
if [[ -e $ROOT ]]; then
  unmount_under "$ROOT"
  mv "$ROOT" "$ROOT.old"
fi
mv "$new" "$ROOT"
remove_tree "$ROOT.old"
log "built $ROOT in ${elapsed}s (PoCL $pocl_version, $(du -sh "$ROOT" | cut -f1))"
