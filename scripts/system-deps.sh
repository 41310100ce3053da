#!/bin/sh
# Install the Debian packages the test suite needs, if they are missing.
# systemd-analyze (unit verification) and systemd-socket-activate (socket
# activation tests) both come from Debian's `systemd` package.
set -eu
missing=""
for tool in systemd-analyze systemd-socket-activate; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
[ -z "$missing" ] && exit 0
echo "system-deps: missing$missing; installing Debian package systemd" >&2
if [ "$(id -u)" -ne 0 ]; then
    echo "system-deps: run as root, or: sudo apt-get install -y systemd" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends systemd >/dev/null
