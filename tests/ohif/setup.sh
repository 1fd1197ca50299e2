#!/usr/bin/env bash
# Installs what tests/integration/test_ohif.py needs, idempotently and quietly:
#   - Chromium (Debian package) for the headless browser;
#   - the prebuilt OHIF v3 viewer, npm package @ohif/app at the version in tests/ohif/OHIF_VERSION,
#     unpacked into build/ohif/<version>/ (dist/ holds the static app), its sha512 checked.
# Needs root or sudo for apt-get, and npm (installed from Debian when missing). Prints nothing when
# everything is already there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
version=$(tr -d '[:space:]' < "$here/OHIF_VERSION")
# sha512 of ohif-app-<version>.tgz (npm's dist.integrity, in hex): change it with the version.
declare -A SHA512=(
  [3.13.2]=5997719a9986eeba85816f5924b71b82bdd70ad2e2d4a0cd3e831a798e4f3deea3e06e1f8c48e393271933a0ba664d85f3b04ac457e9abe8dde715d907d13c10
)
dest="$root/build/ohif/$version"

log() { printf '\033[1m[ohif setup]\033[0m %s\n' "$*" >&2; }

apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  log "installing Debian packages: $*"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v chromium >/dev/null 2>&1 || apt_install chromium

if [ ! -f "$dest/dist/index.html" ]; then
  want=${SHA512[$version]:-}
  [ -n "$want" ] || { log "no sha512 pinned for @ohif/app@$version in $0"; exit 1; }
  command -v npm >/dev/null 2>&1 || apt_install npm
  log "fetching @ohif/app@$version into ${dest#"$root"/}"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent --no-fund --no-audit "@ohif/app@$version" >/dev/null)
  tarball="$tmp/ohif-app-$version.tgz"
  got=$(sha512sum "$tarball" | cut -d' ' -f1)
  if [ "$got" != "$want" ]; then
    log "sha512 mismatch for $tarball: got $got"
    exit 1
  fi
  mkdir -p "$tmp/unpacked"
  tar -xzf "$tarball" -C "$tmp/unpacked" --strip-components=1   # the tarball's top folder is package/
  [ -f "$tmp/unpacked/dist/index.html" ] || { log "no dist/index.html in the package"; exit 1; }
  mkdir -p "$(dirname "$dest")"
  rm -rf "$dest"
  mv "$tmp/unpacked" "$dest"
fi
