#!/usr/bin/env bash
# The HTML reports as a person sees them: renders the pages copa writes in a real headless browser
# (Debian's chromium) and checks what comes out.
#
#   1. `copa demo` (both merges write merge_report.html), `copa bench --quick --ops select
#      --html --json`, and `copa report` of that JSON (the same page drawn from the saved file).
#   2. Each page is screenshot by chromium: the PNG must not be blank (enough non-white pixels) and the
#      charts must be there (enough coloured pixels: the charts are the only colour on the page).
#   3. No request leaves the file: chromium's network log of each page must name no URL other than the
#      page itself and the browser's own background services. A control page (a report with its
#      Content-Security-Policy removed and an <img> to http://copa-html-check.invalid/ added) must be
#      caught, which shows the check can fail.
#
#   .ci/html.sh [--keep DIR]   (bash .ci/run calls it after the samples; --keep leaves the screenshots
#                               in DIR: the README's pictures come from there)
#
# Installs chromium with apt-get when it is missing (CI runs as root on Debian). Exits non-zero on
# the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
keep=""
[ "${1:-}" = "--keep" ] && keep=$(realpath -m "$2")
start=$SECONDS
say() { echo "html: $*"; }
fail() { echo "html: FAILED: $*" >&2; exit 1; }

if ! command -v chromium >/dev/null; then
  say "installing chromium (apt-get)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || fail "apt-get install chromium"
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/copa-html.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

dotnet build src/CopaKernels.Cli -c Release -v:quiet -nologo -clp:NoSummary >/dev/null || fail "dotnet build"
copa=(dotnet src/CopaKernels.Cli/bin/Release/net10.0/copa.dll)
"${copa[@]}" demo --dir "$tmp/demo" >/dev/null || fail "copa demo"
"${copa[@]}" bench --quick --ops select --json "$tmp/bench.json" --html "$tmp/bench.html" >/dev/null || fail "copa bench --html"
"${copa[@]}" report "$tmp/bench.json" -o "$tmp/bench-from-json.html" >/dev/null || fail "copa report bench.json"
cmp -s "$tmp/bench.html" "$tmp/bench-from-json.html" || fail "the bench page drawn from its --json file differs from the one bench wrote"
"${copa[@]}" report "$tmp/demo/merged-model/merge_report.json" -o "$tmp/model-from-json.html" >/dev/null || fail "copa report merge_report.json"
cmp -s "$tmp/demo/merged-model/merge_report.html" "$tmp/model-from-json.html" || fail "the merge page drawn from merge_report.json differs from the one the merge wrote"

# The control: a page that does fetch something, which the network check must catch.
sed -e 's|<meta http-equiv="Content-Security-Policy"[^>]*>||' \
    -e 's|<body>|<body><img src="http://copa-html-check.invalid/probe.png" alt="">|' \
    "$tmp/demo/merged-adapter/merge_report.html" > "$tmp/control.html"

shoot() { # page png netlog
  timeout 120 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync --disable-default-apps \
    --host-resolver-rules="MAP * ~NOTFOUND" --log-net-log="$3" --window-size=1280,1800 \
    --screenshot="$2" "file://$1" >/dev/null 2>&1 || true
  [ -s "$2" ] || fail "chromium wrote no screenshot of $1"
}

check() { # label page png netlog expect_request
  python3 - "$@" <<'PY'
import json, struct, sys, zlib
label, page, png, netlog, expect = sys.argv[1:]
# The screenshot: decode the PNG (8-bit RGB/RGBA, filters 0-4) and count its pixels.
data = open(png, "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
pos, idat, w = 8, b"", 0
while pos < len(data):
    n, kind = struct.unpack(">I4s", data[pos:pos + 8]); body = data[pos + 8:pos + 8 + n]; pos += 12 + n
    if kind == b"IHDR": w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
    elif kind == b"IDAT": idat += body
assert depth == 8 and ctype in (2, 6), f"PNG type {ctype}/{depth}"
bpp = 4 if ctype == 6 else 3
raw, stride = zlib.decompress(idat), w * bpp
prev, rows, i = bytearray(stride), [], 0
for _ in range(h):
    f, line = raw[i], bytearray(raw[i + 1:i + 1 + stride]); i += 1 + stride
    for x in range(stride):
        a = line[x - bpp] if x >= bpp else 0; b = prev[x]; c = prev[x - bpp] if x >= bpp else 0
        if f == 1: line[x] = (line[x] + a) & 255
        elif f == 2: line[x] = (line[x] + b) & 255
        elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    rows.append(line); prev = line
total = w * h
ink = colour = 0
for line in rows:
    for x in range(0, stride, bpp):
        r, g, b = line[x], line[x + 1], line[x + 2]
        if r < 245 or g < 245 or b < 245: ink += 1
        if max(r, g, b) - min(r, g, b) > 60: colour += 1
# The network log: every URL chromium touched, less the page and the browser's own services.
own = ("update.googleapis.com", "clients2.google.com", "accounts.google.com", "clients1.google.com",
       "safebrowsingohttpgateway.googleapis.com", "optimizationguide-pa.googleapis.com", "redirector.gvt1.com",
       "edgedl.me.gvt1.com", "content-autofill.googleapis.com", "www.google.com", "android.clients.google.com")
log = json.load(open(netlog))
urls = set()
for e in log.get("events", []):
    u = e.get("params", {}).get("url")
    if isinstance(u, str): urls.add(u)
foreign = sorted(u for u in urls if not u.startswith("file://") and not u.startswith("data:")
                 and not any(("//" + host) in u for host in own))
print(f"html: {label}: {w}x{h}, {100 * ink / total:.1f} % ink, {100 * colour / total:.2f} % colour, "
      f"{len(foreign)} request(s) from the page")
if expect == "request":
    sys.exit(0 if any("copa-html-check.invalid" in u for u in foreign) else
             print("html: the control page's request was not seen: the network check is blind", file=sys.stderr) or 1)
bad = []
if ink < 0.02 * total: bad.append("the page is blank")
if colour < 0.005 * total: bad.append("no chart was drawn (no coloured pixels)")
if foreign: bad.append("the page made requests: " + ", ".join(foreign))
for b in bad: print(f"html: {label}: {b}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
}

for page in "merged-adapter:$tmp/demo/merged-adapter/merge_report.html" "merged-model:$tmp/demo/merged-model/merge_report.html" \
            "bench:$tmp/bench.html"; do
  label=${page%%:*}; file=${page#*:}
  shoot "$file" "$tmp/$label.png" "$tmp/$label.net.json"
  check "$label" "$file" "$tmp/$label.png" "$tmp/$label.net.json" none || fail "$label"
done
shoot "$tmp/control.html" "$tmp/control.png" "$tmp/control.net.json"
check control "$tmp/control.html" "$tmp/control.png" "$tmp/control.net.json" request || fail "control"

if [ -n "$keep" ]; then
  mkdir -p "$keep"
  cp "$tmp/merged-adapter.png" "$tmp/bench.png" "$keep/"
  say "screenshots kept in $keep"
fi
say "all passed in $((SECONDS - start)) s (3 pages rendered by $(chromium --version 2>/dev/null | head -n 1), and a control)"
