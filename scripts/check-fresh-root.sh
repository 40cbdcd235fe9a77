#!/usr/bin/env bash
# CI check that scripts/setup.sh works on a bare Debian 12, even on a machine that already has everything:
#   1. build a minimal Debian 12 root (mmdebstrap --variant=minbase bookworm) under /var/tmp;
#   2. copy the working tree in and run scripts/setup.sh there with chroot;
#   3. assert QEMU >= 10, qemu-img, qemu-nbd, the older peer QEMU 7.2, the venv with every pin of
#      requirements-dev.txt, ansible-playbook, and that the test guest builds;
#   4. run scripts/setup.sh again: it must change nothing and be quick.
# Every command in the root runs in its own private mount namespace, so its bind mounts end with it, also on
# failure. The root is removed at the end. Run as root; installs mmdebstrap when it is missing.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" -eq 0 ] || { echo "check-fresh-root: run as root (it builds a chroot)" >&2; exit 1; }
fail() { echo "check-fresh-root: FAIL: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
start=$(now)

if ! command -v mmdebstrap >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q mmdebstrap >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && apt-get install -y -q mmdebstrap >/dev/null; }
fi

# On disk, not tmpfs: the root ends up holding two QEMUs, a compiler and a venv.
base=$(mktemp -d /var/tmp/livemig-fresh-root.XXXXXX)
root=$base/root
mounted_under() { awk -v dir="$1/" 'index($5, dir) == 1 { print $5 }' /proc/self/mountinfo; }
cleanup() {
    # Nothing may be mounted there (the namespaces are gone); if something is, removing it could reach the
    # host's /dev or /sys: leave it for a person to look at.
    if [ -n "$(mounted_under "$base")" ]; then
        echo "check-fresh-root: still mounted under $base, not removed:" >&2
        mounted_under "$base" >&2
        exit 1
    fi
    rm -rf --one-file-system "$base"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP  # so that the root is removed when the check is stopped too

in_root() { # run a command in the root: chroot, in a private mount namespace with /dev, /proc and /sys bound
    # /dev recursively, for /dev/pts and /dev/shm. The host's environment is kept (pip's settings here live in
    # variables), but not its PATH nor the set-up's own overrides.
    # shellcheck disable=SC2016 # the script in single quotes is expanded by that sh, from its arguments
    unshare --mount --propagation private -- /bin/sh -euc '
        root=$1
        shift
        mount --rbind /dev "$root/dev"
        mount --bind /proc "$root/proc"
        mount --bind /sys "$root/sys"
        exec env -u VENV -u PYTHON PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
            chroot "$root" "$@"' sh "$root" "$@"
}

echo "== minimal Debian 12 root in $root"
phase=$(now)
# In its own mount namespace too: mmdebstrap mounts /dev, /proc and /sys into the root while it works.
unshare --mount --propagation private -- mmdebstrap --quiet --variant=minbase bookworm "$root"
t_mmdebstrap=$(since "$phase")
echo "(${t_mmdebstrap} s)"

# The host's name resolution, pip settings and CA bundle (this machine's network needs its own CA, and pip,
# requests and the like are pointed at the bundle by variables that chroot keeps); a real machine has its own.
# Only files: nothing is installed. When set-up installs ca-certificates, its update-ca-certificates rebuilds the
# bundle from Debian's CAs alone: a hook of its own (run after every rebuild) puts the host's bundle back.
for file in /etc/resolv.conf /etc/pip.conf /etc/ssl/certs/ca-certificates.crt "${PIP_CERT:-}"; do
    if [ -n "$file" ] && [ -f "$file" ]; then
        mkdir -p "$root$(dirname "$file")"
        cp -L "$file" "$root$file"
    fi
done
if [ -f "$root/etc/ssl/certs/ca-certificates.crt" ]; then
    cp "$root/etc/ssl/certs/ca-certificates.crt" "$root/etc/ssl/host-ca-bundle.crt"
    mkdir -p "$root/etc/ca-certificates/update.d"
    cat > "$root/etc/ca-certificates/update.d/host-ca-bundle" <<'HOOK'
#!/bin/sh
# Written by scripts/check-fresh-root.sh: keep the host's CA bundle in this test root.
cat >/dev/null
cp /etc/ssl/host-ca-bundle.crt /etc/ssl/certs/ca-certificates.crt
HOOK
    chmod 755 "$root/etc/ca-certificates/update.d/host-ca-bundle"
fi

# The host's downloaded .debs, as hard links (no copy, and removing a link leaves the host's file). apt in the
# root uses a cached .deb only when its size and hash match the archive's index, so the root installs exactly
# what it would download; it still starts with nothing installed.
mkdir -p "$root/var/cache/apt/archives"
find /var/cache/apt/archives -maxdepth 1 -name '*.deb' -exec cp -l -t "$root/var/cache/apt/archives" {} + \
    2>/dev/null || echo "(the host's apt cache is not linked in: the root downloads its packages)"

# The working tree as a user would have it after a clone, without what git ignores (.venv, built guest, ...).
mkdir -p "$root/root/livemig"
tar -C "$repo" --exclude=./.git --exclude=./.venv --exclude=./.lab --exclude=./tests/guest/out \
    --exclude=./tests/output --exclude=./collections --exclude=./.ansible --exclude=./reports \
    --exclude=./benchmarks/results --exclude=__pycache__ --exclude=.pytest_cache -cf - . |
    tar -C "$root/root/livemig" -xf -
app=/root/livemig
venv=$app/.venv

echo "== scripts/setup.sh in the bare root"
phase=$(now)
in_root "$app/scripts/setup.sh" || fail "scripts/setup.sh failed on a bare Debian 12 (output above)"
t_setup1=$(since "$phase")
echo "(${t_setup1} s)"

echo "== what set-up must bring up"
qemu=$(in_root qemu-system-x86_64 --version | sed -n 1p) || fail "qemu-system-x86_64 does not run in the root"
major=$(echo "$qemu" | awk '{ split($4, v, "."); print v[1] + 0 }')
[ "$major" -ge 10 ] || fail "QEMU >= 10 wanted, the root has: $qemu"
for tool in qemu-img qemu-nbd; do
    in_root sh -c "command -v $tool" >/dev/null || fail "$tool is missing in the root (package qemu-utils)"
done
peer=$(in_root /opt/livemig/qemu-7.2/bin/qemu-system-x86_64 --version | sed -n 1p) ||
    fail "the older peer /opt/livemig/qemu-7.2/bin/qemu-system-x86_64 does not run"
case $peer in "QEMU emulator version 7.2."*) ;; *) fail "the older peer is not QEMU 7.2: $peer" ;; esac
[ -x "$root$venv/bin/python" ] || fail "no venv at $venv in the root"

# Every pin of requirements-dev.txt installed at exactly that version; names compared normalised (PEP 503).
normalise() {
    awk -F'==' '{ sub(/[ \t]*#.*/, "") } NF == 2 { n = tolower($1); gsub(/[-_.]+/, "-", n); print n "==" $2 }' | sort
}
pins=$(normalise < "$repo/requirements-dev.txt")
[ -n "$pins" ] || fail "no pins (name==version) found in requirements-dev.txt"
installed=$(in_root "$venv/bin/python" -m pip freeze | normalise) || fail "pip freeze failed in the venv"
wrong=$(comm -23 <(echo "$pins") <(echo "$installed"))
if [ -n "$wrong" ]; then
    for pin in $wrong; do
        have=$(echo "$installed" | grep "^${pin%%==*}==" || true)
        echo "  wanted $pin, installed: ${have:-nothing}" >&2
    done
    fail "the venv does not hold the pins of requirements-dev.txt"
fi
in_root "$venv/bin/ansible-playbook" --version | grep -q '^ansible-playbook \[core ' ||
    fail "$venv/bin/ansible-playbook --version does not run in the root"
echo "QEMU $major, qemu-img, qemu-nbd, peer 7.2, $(echo "$pins" | wc -l) pins, ansible-playbook: ok"

echo "== the test guest builds in the root"
phase=$(now)
in_root "$app/tests/guest/build.sh" >/dev/null || fail "tests/guest/build.sh failed in the root"
for file in vmlinuz initrd.img; do
    [ -s "$root$app/tests/guest/out/$file" ] || fail "tests/guest/build.sh left no tests/guest/out/$file"
done
t_guest=$(since "$phase")
echo "(${t_guest} s)"

echo "== scripts/setup.sh again: changes nothing"
marker=$base/before-second-run
touch "$marker"
phase=$(now)
in_root "$app/scripts/setup.sh" >/dev/null || fail "the second scripts/setup.sh run failed"
t_setup2=$(since "$phase")
echo "(${t_setup2} s)"
# What set-up owns: packages (/usr, /etc, /var/lib/dpkg, /var/lib/apt), QEMU 7.2 (/opt) and the venv. /var/cache
# and /var/log are left out: apt may refresh its caches and logs without installing anything.
changed=$(find "$root/usr" "$root/etc" "$root/opt" "$root/var/lib/dpkg" "$root/var/lib/apt" "$root$venv" \
    \( -newer "$marker" -o -cnewer "$marker" \) -print)
if [ -n "$changed" ]; then
    echo "$changed" | sed "s|^$root||" | head -n 20 >&2
    fail "the second scripts/setup.sh run changed $(echo "$changed" | wc -l) path(s), listed above"
fi
awk -v t="$t_setup2" 'BEGIN { exit !(t < 10) }' || fail "the second scripts/setup.sh run took $t_setup2 s (> 10 s)"

[ -z "$(mounted_under "$base")" ] || fail "mounts left under $base: $(mounted_under "$base")"
echo "== fresh root: mmdebstrap ${t_mmdebstrap} s, first setup ${t_setup1} s, guest build ${t_guest} s," \
    "second setup ${t_setup2} s, total $(since "$start") s"
