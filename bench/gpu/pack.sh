#!/usr/bin/env bash
# Packs what a GPU machine without .NET needs to list its devices, benchmark and run the tests:
# the `copa` CLI and the test assembly, each published self-contained for linux-x64 (Release),
# plus run-on-gpu.sh, in one .tar.xz under .gpu/ at the repository root (git-ignored).
#
#   bench/gpu/pack.sh              -> .gpu/copakernels-gpu.tar.xz (unpacks to copakernels-gpu/)
#
# The publish runs on a copy of the working tree (tracked and untracked, not ignored, files), so
# the archive matches what you see, including uncommitted edits, and your bin/ and obj/ folders
# are not touched (a -r linux-x64 restore would rewrite obj/project.assets.json).
# Needs the .NET SDK and NuGet access (the linux-x64 runtime pack is downloaded once).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
name=copakernels-gpu
out_dir=$root/.gpu
archive=$out_dir/$name.tar.xz
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

log() { echo "pack: $*" >&2; }
die() { echo "pack: error: $*" >&2; exit 1; }
command -v dotnet >/dev/null || die "the .NET SDK (dotnet) is required to build the package"
command -v xz >/dev/null || die "xz is required"

start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/copa-gpu-pack.XXXXXX")
trap 'rm -rf "$work"' EXIT
src=$work/src
pkg=$work/$name
mkdir -p "$src" "$pkg"

# The working tree as it is, without build outputs or other ignored files.
(cd "$root" && git ls-files -z --cached --others --exclude-standard | xargs -0 -r sh -c '
  for f; do [ -f "$f" ] && printf "%s\0" "$f"; done' sh | tar --null -T - -cf -) | tar -xf - -C "$src"
rev=$(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)

# Self-contained: the GPU machine has no .NET. No trimming: ILGPU and xunit reflect over code that
# a trimmer cannot see. Our PDBs stay (small), so failures there come with file:line. Not composite
# (as the CLI's own publish is by default): a composite copa/ shares no runtime files with tests/, which made
# the archive 58 MB instead of 36, close to what a device run can carry (64 MiB); on a GPU the JIT
# time composite saves is noise beside the runs.
publish() { # $1: project folder, $2: output folder name
  log "dotnet publish $1 (self-contained linux-x64)"
  dotnet publish "$src/$1" -c Release -r linux-x64 --self-contained true -p:UseAppHost=true \
    -p:PublishReadyToRunComposite=false \
    -o "$pkg/$2" -nologo -v quiet >"$work/publish-$2.log" 2>&1 || {
    tail -n 40 "$work/publish-$2.log" >&2
    die "dotnet publish $1 failed"
  }
}
publish src/CopaKernels.Cli copa
publish tests/CopaKernels.Tests tests
[[ -x $pkg/copa/copa && -x $pkg/tests/CopaKernels.Tests ]] || die "the published apphosts are missing"

cp "$src/bench/gpu/run-on-gpu.sh" "$pkg/run-on-gpu.sh"
chmod +x "$pkg/run-on-gpu.sh"
cp "$src/bench/gpu/README.md" "$pkg/README.md"
{
  echo "copakernels-gpu package"
  echo "source: $rev"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) with .NET SDK $(dotnet --version)"
} >"$pkg/VERSION"

# Both folders carry the same .NET runtime and libraries (the tests reference the CLI, so copa/ is a
# subset of tests/). Identical files become hard links, which tar stores once: the archive then
# holds one runtime, and xz need not find the second copy itself (it can, within its 64 MiB
# window, but that means compressing 200 MB instead of 115 MB: a minute more on 2 cores). The
# unpacked package has the links too; the apps only read those files.
linked=0
for f in "$pkg"/copa/*; do
  twin=$pkg/tests/$(basename "$f")
  if [[ -f $f && ! -L $f && -f $twin ]] && cmp -s "$f" "$twin"; then
    ln -f "$twin" "$f"
    linked=$((linked + 1))
  fi
done
log "compressing (xz -9; $linked files shared by copa/ and tests/)"
mkdir -p "$out_dir"
tar -C "$work" --sort=name --owner=0 --group=0 --numeric-owner -cf - "$name" | xz -9 >"$archive.tmp"
mv "$archive.tmp" "$archive"

unpacked=$(du -sm "$pkg" | cut -f1)
packed=$(du -m "$archive" | cut -f1)
log "done in $(( $(date +%s) - start ))s: $archive (${packed} MB; ${unpacked} MB unpacked; source $rev)"
echo "$archive"
