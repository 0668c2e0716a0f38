#!/usr/bin/env bash
# Install the Debian packages `make test` needs, only when they are missing.
#
# Usage: scripts/system-deps.sh [mosquitto] [postgresql] [chromium] [nginx] [venv]
#   mosquitto   the Mosquitto broker (the end-to-end tests start their own on free ports)
#   postgresql  PostgreSQL server binaries (the store tests initdb a throwaway cluster)
#   chromium    Debian's Chromium, driven by Playwright in the admin browser tests
#   nginx       nginx, the downloads ceiling of the benchmark (`make bench` only)
#   venv       python3-venv, so `$PYTHON -m venv` works with Debian's /usr/bin/python3
#
# Runs `apt-get update` at most once, uses sudo when not root, and prints the exact
# command to run by hand when neither root nor sudo is available.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
missing=()

have_mosquitto() {
    command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto
}

have_postgresql() {
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

have_chromium() {
    test -x /usr/bin/chromium
}

have_nginx() {
    command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx
}

have_venv() {
    # Debian splits ensurepip out of python3; pyenv and python.org builds have it.
    "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1
}

for want in "$@"; do
    case "$want" in
        mosquitto) have_mosquitto || missing+=(mosquitto) ;;
        postgresql) have_postgresql || missing+=(postgresql) ;;
        chromium) have_chromium || missing+=(chromium) ;;
        nginx) have_nginx || missing+=(nginx) ;;
        venv)
            if ! have_venv; then
                minor="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
                missing+=("python${minor}-venv")
            fi
            ;;
        *) echo "system-deps: unknown dependency '$want'" >&2; exit 2 ;;
    esac
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

install_cmd="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: missing ${missing[*]} and this is not a Debian/Ubuntu system (no apt-get)." >&2
    echo "system-deps: install them with your package manager, then re-run make." >&2
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    echo "system-deps: missing ${missing[*]}; installing needs root and sudo is not available." >&2
    echo "system-deps: as root, run:  $install_cmd" >&2
    exit 1
fi

echo "system-deps: installing ${missing[*]} with apt-get"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${missing[@]}"

for pkg in "${missing[@]}"; do
    if [ "$pkg" = mosquitto ]; then
        # Debian's package starts a system broker on port 1883. The tests start their own
        # brokers on free ports, and `make run` wants 1883 for the embedded one, so stop it.
        # Only right after our own install: an operator's existing broker is left alone.
        "${as_root[@]}" service mosquitto stop >/dev/null 2>&1 || true
        "${as_root[@]}" systemctl stop mosquitto >/dev/null 2>&1 || true
        "${as_root[@]}" systemctl disable mosquitto >/dev/null 2>&1 || true
    fi
    if [ "$pkg" = postgresql ]; then
        # The tests run their own throwaway clusters; Debian's default one is not needed.
        "${as_root[@]}" service postgresql stop >/dev/null 2>&1 || true
    fi
    if [ "$pkg" = nginx ]; then
        # The benchmark runs its own nginx on a free port; the system one would hold port 80.
        "${as_root[@]}" service nginx stop >/dev/null 2>&1 || true
    fi
done

if ! have_mosquitto && printf '%s\n' "${missing[@]}" | grep -qx mosquitto; then
    echo "system-deps: mosquitto was installed but no mosquitto binary is in PATH or /usr/sbin" >&2
    exit 1
fi
