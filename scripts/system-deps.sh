#!/bin/sh
# Install the Debian packages the test suite needs, if they are missing.
# systemd-analyze (unit verification) and systemd-socket-activate (socket
# activation tests) both come from Debian's `systemd` package; the dashboard's
# browser tests drive Debian's `chromium` (/usr/bin/chromium) with Playwright,
# so no browser is ever downloaded by `playwright install`.  The Node.js
# client (clients/node) is tested with Debian's `nodejs` and `npm`.
set -eu
packages=""
for tool in systemd-analyze systemd-socket-activate; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        packages="systemd"
    fi
done
[ -x /usr/bin/chromium ] || packages="$packages chromium"
command -v node >/dev/null 2>&1 || packages="$packages nodejs"
command -v npm >/dev/null 2>&1 || packages="$packages npm"
[ -z "$packages" ] && exit 0
echo "system-deps: installing Debian package(s):$packages" >&2
if [ "$(id -u)" -ne 0 ]; then
    echo "system-deps: run as root, or: sudo apt-get install -y$packages" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086 # the package list is meant to split
apt-get install -y -qq --no-install-recommends $packages >/dev/null
