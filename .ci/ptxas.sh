#!/usr/bin/env bash
# Makes NVIDIA's PTX assembler (ptxas, CUDA 11.8, from Debian 12's non-free nvidia-cuda-toolkit)
# available without a GPU, a CUDA driver or an installed toolkit, so CI can check that every ILGPU
# kernel's PTX is accepted by the same assembler the CUDA driver would run.
#
#   .ci/ptxas.sh        prints the absolute path of a working ptxas on stdout (and nothing else);
#                       downloads and unpacks it first if the cache is missing, incomplete or
#                       outdated. Progress and errors go to stderr. Exit status 1 if it cannot.
#
# Cache: $COPA_PTXAS_CACHE, default /var/cache/copakernels/cuda-ptxas (outside the clone, so it
#        survives across clones and CI runs). Layout: bin/ptxas, share/copyright (NVIDIA's licence,
#        shipped in the .deb), and the stamp .copa-ptxas-ready, written last. A cache without the
#        stamp, or with a stamp of another script version / package, is rebuilt into $CACHE.new,
#        which is renamed to $CACHE when complete. $CACHE.lock: one builder at a time; others wait.
# Mirror: the Debian mirror that apt on this host uses (override: $COPA_DEBIAN_MIRROR).
#
# Why a private apt configuration: the host's sources usually lack the non-free component, and CI
# must not change the host's /etc/apt. APT_CONFIG points apt at a throw-away configuration in a temp
# folder (its own sources.list with non-free, lists, cache, an empty dpkg status, and no host
# apt.conf.d, whose hooks such as docker-clean or appstream must not run). apt still checks the
# archive's signatures with the host's Debian keyring and the .deb's hash against the signed index.
# Only `apt-get download` + `dpkg -x` are used: nothing is installed, so this also works unprivileged
# where the cache folder is writable.
set -euo pipefail

SCRIPT_VERSION=1
SUITE=bookworm                      # Debian 12: CUDA 11.8, whose ptxas knows sm_90 and PTX ISA 7.8
PACKAGE=nvidia-cuda-toolkit         # /usr/bin/ptxas is in this package (not in nvidia-cuda-dev)
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
CACHE=${COPA_PTXAS_CACHE:-/var/cache/copakernels/cuda-ptxas}
CACHE=${CACHE%/}
STAMP_NAME=.copa-ptxas-ready
stamp_head="copa-ptxas v${SCRIPT_VERSION} suite=${SUITE} package=${PACKAGE}"

log() { echo "ptxas: $*" >&2; }
die() { echo "ptxas: error: $*" >&2; exit 1; }

# Ready: the stamp's first line matches, and the binary really runs (a truncated or foreign file
# would otherwise be trusted forever).
is_ready() { # $1: a cache directory
  [[ -f $1/$STAMP_NAME && -x $1/bin/ptxas ]] \
    && [[ "$(head -n 1 "$1/$STAMP_NAME")" == "$stamp_head" ]] \
    && "$1/bin/ptxas" --version >/dev/null 2>&1
}
ready_exit() {
  [[ ${COPA_PTXAS_QUIET:-} == 1 ]] || log "cached $(sed -n 2p "$CACHE/$STAMP_NAME")"
  echo "$CACHE/bin/ptxas"
  exit 0
}

is_ready "$CACHE" && ready_exit

[[ $CACHE == /* && $CACHE != / ]] || die "COPA_PTXAS_CACHE must be an absolute path other than /: '$CACHE'"
mkdir -p "$(dirname "$CACHE")" || die "cannot create $(dirname "$CACHE")"
# One builder at a time; a second caller waits, then finds the cache ready.
exec 9>"$CACHE.lock" || die "cannot open the lock file $CACHE.lock"
if ! flock -n 9; then
  log "another setup of $CACHE is running; waiting for it"
  flock -w 1800 9 || die "timed out waiting for the lock $CACHE.lock"
fi
is_ready "$CACHE" && ready_exit

for tool in apt-get dpkg flock; do
  command -v "$tool" >/dev/null || die "$tool is required (this script expects a Debian or Ubuntu host)"
done
[[ -f $KEYRING ]] || die "no Debian archive keyring at $KEYRING (install debian-archive-keyring)"

. "$here/debian-mirror.sh"
mirror=$(debian_mirror)
start=$(date +%s)
new="$CACHE.new"
rm -rf "$new" "$CACHE.old"
work=$(mktemp -d "${TMPDIR:-/tmp}/copa-ptxas.XXXXXX")
# On any exit: drop the temp folder, and a half-built $CACHE.new (a complete one was renamed).
trap 'rm -rf "$work" "$new"' EXIT
logfile="$work/apt.log"
fail() { # prints the tail of apt's output, then dies
  echo "---- last lines of the apt/dpkg output ----" >&2
  tail -n 30 "$logfile" >&2 || true
  die "$*"
}

log "fetching $PACKAGE from $mirror ($SUITE non-free) into $CACHE"
mkdir -p "$work"/{etc/apt.conf.d,etc/preferences.d,etc/sources.list.d,state/lists/partial,cache/archives/partial,deb}
: >"$work/state/status"
# bookworm-updates too: a stable update of the toolkit would be published there first.
cat >"$work/etc/sources.list" <<EOF
deb [signed-by=$KEYRING] $mirror $SUITE non-free
deb [signed-by=$KEYRING] $mirror $SUITE-updates non-free
EOF
cat >"$work/apt.conf" <<EOF
Dir::Etc::Main "/dev/null";
Dir::Etc::Parts "$work/etc/apt.conf.d";
Dir::Etc::SourceList "$work/etc/sources.list";
Dir::Etc::SourceParts "$work/etc/sources.list.d";
Dir::Etc::Preferences "/dev/null";
Dir::Etc::PreferencesParts "$work/etc/preferences.d";
Dir::State "$work/state";
Dir::State::Status "$work/state/status";
Dir::Cache "$work/cache";
Acquire::Languages "none";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
APT::Sandbox::User "root";
EOF
# (amd64: Debian ships the toolkit for amd64, arm64 and ppc64el only; this CI runs on x86-64.)
[[ $(uname -m) == x86_64 ]] || die "only x86-64 hosts are supported (this is $(uname -m))"
export APT_CONFIG="$work/apt.conf"
# --error-on=any: without it apt-get update exits 0 when the mirror cannot be reached.
apt-get update -q --error-on=any >"$logfile" 2>&1 || fail "apt-get update with the private configuration failed ($mirror)"
version=$(apt-cache policy "$PACKAGE" 2>>"$logfile" | awk '/Candidate:/ { print $2 }')
[[ -n $version && $version != "(none)" ]] || fail "$PACKAGE is not available from $mirror $SUITE non-free"
(cd "$work/deb" && apt-get download -q "$PACKAGE=$version") >>"$logfile" 2>&1 \
  || fail "apt-get download $PACKAGE=$version failed"
deb=$(ls "$work"/deb/*.deb 2>/dev/null | head -n 1)
[[ -n $deb ]] || fail "apt-get download produced no .deb"
dpkg -x "$deb" "$work/x" >>"$logfile" 2>&1 || fail "dpkg -x $(basename "$deb") failed"
[[ -f $work/x/usr/bin/ptxas ]] || fail "$(basename "$deb") contains no usr/bin/ptxas"

# Keep only ptxas (19 MB; the whole toolkit is 170 MB unpacked) and its licence.
mkdir -p "$new/bin" "$new/share"
mv "$work/x/usr/bin/ptxas" "$new/bin/ptxas"
cp "$work/x/usr/share/doc/$PACKAGE/copyright" "$new/share/copyright" 2>/dev/null || true
# It must run on its own here (it links only libc/libm/libpthread) and be the expected release.
ptxas_version=$("$new/bin/ptxas" --version 2>&1) || fail "the unpacked ptxas does not run: $ptxas_version"
release=$(sed -n 's/.*release \([0-9.]*\).*/\1/p' <<<"$ptxas_version")
[[ -n $release ]] || die "unexpected 'ptxas --version' output: $ptxas_version"

elapsed=$(( $(date +%s) - start ))
# The stamp goes last: only a complete, checked cache has it.
printf '%s\nptxas %s (%s %s), fetched %s in %ds\n' "$stamp_head" "$release" "$PACKAGE" "$version" \
  "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$elapsed" >"$new/$STAMP_NAME"
[[ -e $CACHE ]] && mv "$CACHE" "$CACHE.old"
mv "$new" "$CACHE"
rm -rf "$CACHE.old"
log "ready in ${elapsed}s: ptxas $release ($PACKAGE $version)"
echo "$CACHE/bin/ptxas"
