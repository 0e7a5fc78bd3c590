# Sourced by pocl-root.sh and ptxas.sh (not run): host_mirror prints the Debian mirror that apt uses
# on this host, i.e. the URIs of the sources for the host's own suite, one a line, first the
# one-line sources.list files, then the deb822 *.sources files. Callers take the first line that is
# not a security mirror, and fall back to http://deb.debian.org/debian. Reading the host's apt
# sources (rather than hard-coding deb.debian.org) keeps CI on the mirror or proxy the machine is
# configured for.
host_mirror() {
  local codename f
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    awk -v s="$codename" '$1 == "deb" { for (i = 2; i < NF; i++) if ($i ~ /^[a-z]+:\/\// && $(i + 1) == s) { print $i; exit } }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    # deb822 stanzas: print the URI of a stanza whose Suites list the codename.
    awk -v s="$codename" '
      function flush() { if (uri != "" && hit && isdeb) print uri; uri = ""; hit = 0; isdeb = 1 }
      BEGIN { isdeb = 1 }
      /^[ \t]*$/ { flush(); next }
      /^#/ { next }
      /^Types:/ { isdeb = ($0 ~ /[ \t]deb([ \t]|$)/) }
      /^URIs:/ { uri = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) hit = 1 }
      /^Enabled:[ \t]*no/ { isdeb = 0 }
      END { flush() }' "$f"
  done
}

# The mirror to use: $COPA_DEBIAN_MIRROR, else the host's (without security mirrors), else
# deb.debian.org. No trailing slash.
debian_mirror() {
  local m=${COPA_DEBIAN_MIRROR:-$(host_mirror | grep -v -e security -e '^$' | head -n 1 || true)}
  m=${m:-http://deb.debian.org/debian}
  echo "${m%/}"
}
