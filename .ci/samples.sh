#!/usr/bin/env bash
# The packages as a user gets them: packs the solution into a local feed, builds and runs the two
# samples (samples/KernelSample, samples/MergeSample) against that feed by PackageReference, installs
# the copa tool from it into a temporary tool path and runs `copa --version` and `copa demo` with it.
# Everything goes into one temporary folder, removed at the end. Exits non-zero on the first failure.
#
#   .ci/samples.sh            (bash .ci/run calls it after the tests)
#
# The feed's packages are restored into a temporary NuGet cache, so a re-pack of the same version
# (same commit, changed work tree) is what the samples get, not a copy cached by an earlier run.
set -euo pipefail
cd "$(dirname "$0")/.."
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
start=$SECONDS

tmp=$(mktemp -d "${TMPDIR:-/tmp}/copa-samples.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
feed=$tmp/feed
say() { echo "samples: $*"; }
fail() { echo "samples: FAILED: $*" >&2; exit 1; }

# 1. Pack: exactly the four libraries and the tool, each with its symbol package.
say "dotnet pack CopaKernels.sln -c Release -o $feed"
dotnet pack CopaKernels.sln -c Release -o "$feed" -nologo -clp:NoSummary -v:quiet || fail "dotnet pack"
merge_pkg=$(cd "$feed" && ls CopaKernels.Merge.*.nupkg 2>/dev/null) || fail "no CopaKernels.Merge package in $feed"
ver=${merge_pkg#CopaKernels.Merge.}
ver=${ver%.nupkg}
expected=""
for id in CopaKernels.Cli CopaKernels.Formats CopaKernels.Gpu CopaKernels.Kernels CopaKernels.Merge; do
  expected+="$id.$ver.nupkg $id.$ver.snupkg "
done
got=$(cd "$feed" && ls | sort | tr '\n' ' ')
want=$(tr ' ' '\n' <<<"$expected" | sed '/^$/d' | sort | tr '\n' ' ')
[[ $got == "$want" ]] || fail "the feed holds [$got], expected [$want]"
say "version $ver: $(ls "$feed" | wc -l) packages in the feed ($((SECONDS - start)) s)"

# The local feed first, then the sources NuGet is configured with here (nuget.org by default), for
# the packages' own dependencies.
sources=(--source "$feed")
while read -r state url; do
  [[ $state == E ]] && sources+=(--source "$url")
done < <(dotnet nuget list source --format short)
export NUGET_PACKAGES=$tmp/packages

# 2. The samples, built as consumers of version $ver.
for s in KernelSample MergeSample; do
  say "build and run samples/$s"
  dotnet restore "samples/$s" "${sources[@]}" -p:CopaVersion="$ver" -v:quiet -nologo || fail "restore samples/$s"
  dotnet build "samples/$s" -c Release --no-restore -p:CopaVersion="$ver" -v:quiet -nologo -clp:NoSummary \
    || fail "build samples/$s"
  dotnet "samples/$s/bin/Release/net10.0/$s.dll" || fail "samples/$s exited with $?"
done

# 3. The tool: install from the feed, run it.
tools=$tmp/tools
say "dotnet tool install CopaKernels.Cli --tool-path $tools --version $ver"
dotnet tool install CopaKernels.Cli --tool-path "$tools" --add-source "$feed" --version "$ver" \
  || fail "dotnet tool install"
shown=$("$tools/copa" --version) || fail "copa --version"
say "copa --version: $shown"
[[ $shown == "$ver" || $shown == "$ver+"* ]] || fail "copa --version printed '$shown', expected $ver"
"$tools/copa" demo --dir "$tmp/demo" || fail "copa demo"
report=$(find "$tmp/demo" -name merge_report.json | head -n 1)
[[ -n $report ]] || fail "copa demo wrote no merge_report.json"
# The provenance names the release (MAJOR.MINOR.PATCH), not the commit: see MergeRunner.ReleaseVersion.
release=${ver%%[-+]*}
grep -q "\"tool\": \"copa $release\"" "$report" || fail "$report does not name copa $release: $(grep '"tool"' "$report")"

say "all passed in $((SECONDS - start)) s (pack, 2 samples, tool install, copa --version, copa demo)"
