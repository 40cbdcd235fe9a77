#!/usr/bin/env bash
# Prepare a Debian 12 machine (as root) for the demo and the tests: QEMU 10 from bookworm-backports,
# the lab's tools, and the pinned Python tools in .venv. Idempotent and quiet when all is in place.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$repo/.venv}
[ "$(id -u)" -eq 0 ] || { echo "setup.sh: run as root (it installs packages and creates network namespaces)" >&2; exit 1; }

backports=/etc/apt/sources.list.d/livemig-bookworm-backports.sources
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    cat > "$backports" <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
fi

packages=(openssh-server openssh-client iproute2 iputils-ping rsync gcc libc6-dev binutils cpio gzip xz-utils zstd
          python3-venv git shellcheck)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || missing+=("$package")
done
qemu_major=$(qemu-system-x86_64 --version 2>/dev/null | awk 'NR==1{split($4, v, "."); print v[1]}')
export DEBIAN_FRONTEND=noninteractive
if [ "${#missing[@]}" -gt 0 ] || [ "${qemu_major:-0}" -lt 10 ]; then
    apt-get update -q >/dev/null
    [ "${#missing[@]}" -eq 0 ] || apt-get install -y -q "${missing[@]}" >/dev/null
    [ "${qemu_major:-0}" -ge 10 ] || apt-get install -y -q -t bookworm-backports qemu-system-x86 qemu-utils >/dev/null
fi
qemu-system-x86_64 --version | sed -n 1p

python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
stamp="$venv/.requirements.sha256"
wanted=$(sha256sum "$repo/requirements-dev.txt" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$repo/requirements-dev.txt"
    echo "$wanted" > "$stamp"
fi
echo "ansible-core $("$venv/bin/python" -c "import ansible.release as r; print(r.__version__)")"
