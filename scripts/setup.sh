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
          python3-venv python3-apt python3-packaging git shellcheck)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || missing+=("$package")
done
# QEMU 10 with qemu-utils (qemu-img, qemu-nbd); on a bare machine none of them is there yet.
qemu_major=0
if command -v qemu-system-x86_64 >/dev/null 2>&1 && command -v qemu-img >/dev/null 2>&1 &&
        command -v qemu-nbd >/dev/null 2>&1; then
    qemu_major=$(qemu-system-x86_64 --version | awk 'NR==1{split($4, v, "."); print v[1]}')
fi
# DEBCONF_NOWARNINGS: no "delaying package configuration, since apt-utils is not installed" on a bare machine.
export DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes
if [ "${#missing[@]}" -gt 0 ] || [ "${qemu_major:-0}" -lt 10 ]; then
    apt-get update -q >/dev/null
    [ "${#missing[@]}" -eq 0 ] || apt-get install -y -q "${missing[@]}" >/dev/null
    [ "${qemu_major:-0}" -ge 10 ] || apt-get install -y -q -t bookworm-backports qemu-system-x86 qemu-utils >/dev/null
fi
qemu-system-x86_64 --version | sed -n 1p

# libvirt 11.3 from bookworm-backports, the benchmark's peer (lab/libvirt.sh): libvirtd with its QEMU driver, and
# virsh. Each package pinned to backports by name: `-t bookworm-backports` would also take systemd from there.
if ! command -v libvirtd >/dev/null 2>&1 || ! command -v virsh >/dev/null 2>&1 ||
        [ ! -e /usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so ]; then
    libvirt_packages=()
    for package in libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt0 libvirt-common \
            libvirt-daemon-common libvirt-daemon-log; do
        libvirt_packages+=("$package/bookworm-backports")
    done
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${libvirt_packages[@]}" >/dev/null
fi
libvirtd --version

# The older peer for cross-version tests: bookworm's own QEMU 7.2 (not backports), unpacked beside QEMU 10 into
# /opt/livemig/qemu-7.2/root with its own ROMs, firmware (bookworm's seabios/ipxe) and modules (TCG is one), and
# started through bin/qemu-system-x86_64, a wrapper that execs it so /proc/PID/cmdline keeps every argument.
install_qemu72() {
    local dir=/opt/livemig/qemu-7.2
    local root=$dir/root wrapper=$dir/bin/qemu-system-x86_64
    local binary=$dir/root/usr/bin/qemu-system-x86_64 tcg=$dir/root/usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so
    local pins=(qemu-system-x86/bookworm qemu-system-common/bookworm qemu-system-data/bookworm seabios/bookworm
                ipxe-qemu/bookworm)
    if [ ! -x "$binary" ] || [ ! -s "$dir/debs.txt" ]; then
        local debs deb
        debs=$(mktemp -d)
        chown _apt "$debs" 2>/dev/null || true
        if ! (cd "$debs" && apt-get download -q "${pins[@]}" >/dev/null 2>&1); then
            apt-get update -q >/dev/null
            (cd "$debs" && apt-get download -q "${pins[@]}" >/dev/null)
        fi
        mkdir -p "$dir"
        rm -rf "$root.new"
        for deb in "$debs"/*.deb; do
            dpkg -x "$deb" "$root.new"
        done
        rm -rf "$root"
        mv "$root.new" "$root"
        dpkg-deb -f "$debs"/qemu-system-x86_*.deb Depends > "$dir/depends.txt"
        (cd "$debs" && ls ./*.deb) > "$dir/debs.txt"
        rm -rf "$debs"
    fi
    # Not `ldd | grep -q`: grep -q may exit before ldd has written all, and pipefail then reads it as "no match".
    unresolved() { ldd "$binary" "$tcg" | grep 'not found' || true; }
    if [ -n "$(unresolved)" ]; then
        # The binary's own shared-library dependencies, minus the QEMU packages it replaces; bookworm versions,
        # as backports has priority 100.
        local libs=() package
        for package in $(tr ',' '\n' < "$dir/depends.txt" | sed 's/[(|].*//; s/ //g'); do
            case $package in qemu-*|seabios|ipxe-qemu) continue ;; esac
            dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || libs+=("$package")
        done
        [ "${#libs[@]}" -eq 0 ] || { apt-get update -q >/dev/null; apt-get install -y -q "${libs[@]}" >/dev/null; }
        local still
        still=$(unresolved)
        if [ -n "$still" ]; then
            printf '%s\n' "$still" >&2
            echo "setup.sh: QEMU 7.2 in $root still lacks the shared libraries above" >&2
            return 1
        fi
    fi
    local script
    script=$(cat <<WRAPPER
#!/bin/sh
# QEMU 7.2 from Debian bookworm, unpacked by scripts/setup.sh: 7.2's ROMs, firmware and modules, not the system's.
QEMU_MODULE_DIR=$root/usr/lib/x86_64-linux-gnu/qemu
export QEMU_MODULE_DIR
exec $binary -L $root/usr/share/qemu -L $root/usr/share/seabios -L $root/usr/lib/ipxe/qemu "\$@"
WRAPPER
)
    if [ "$(cat "$wrapper" 2>/dev/null)" != "$script" ]; then
        mkdir -p "$dir/bin"
        printf '%s\n' "$script" > "$wrapper.new"
        chmod 755 "$wrapper.new"
        mv "$wrapper.new" "$wrapper"
    fi
    local version
    version=$("$wrapper" --version | sed -n 1p)
    case $version in
        "QEMU emulator version 7.2."*) echo "$version" ;;
        *) echo "setup.sh: $wrapper is not QEMU 7.2: ${version:-no version}" >&2; return 1 ;;
    esac
}
install_qemu72

python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
stamp="$venv/.requirements.sha256"
wanted=$(sha256sum "$repo/requirements-dev.txt" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    # pip warns once per package about each configured index or find-links location that does not exist (a
    # machine's pip.conf may name local mirrors): drop those lines, keep everything else on stderr.
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$repo/requirements-dev.txt" 2>&1 |
        sed "/^WARNING: Location '.*' is ignored: /d" >&2
    echo "$wanted" > "$stamp"
fi
echo "ansible-core $("$venv/bin/python" -c "import ansible.release as r; print(r.__version__)")"
