#!/usr/bin/env bash
# What a user gets from `ansible-galaxy collection build`, checked without a container engine or network:
#   1. the tarball built from this tree holds only files on the allow-list below (offenders are printed) and every
#      file it must hold; its files are counted by top-level folder;
#   2. self-test of the allow-list: a copy of the tree with a working tree's junk added (a venv, .ansible/, benchmark
#      results, reports, caches, an old tarball) builds to a tarball without any of it, and stray files that the
#      build does not ignore are reported, so the check can fail;
#   3. the relative links in the tarball's README.md and docs/ resolve inside the tarball (scripts/check_links.py,
#      which is shown to report broken files and anchors too);
#   4. the unit tests of the installed tarball are collected by pytest (they import nothing the tarball leaves out);
#   5. execution environment: `ansible-builder create` on an EE definition that installs the tarball produces a
#      build context (Containerfile with the collection install, introspection and bindep steps, the tarball and its
#      requirements.yml in _build/), and the context's own introspection script, run on the installed tarball as the
#      image build runs it, finds exactly meta/ee-requirements.txt and meta/ee-bindep.txt.
# Exits non-zero on the first failed check.
#
# Environment:
#   VENV   the venv with ansible-core, ansible-builder and pytest (default: <repo>/.venv)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$repo/.venv}
for tool in ansible-galaxy ansible-builder python; do
    if [[ ! -x $VENV/bin/$tool ]]; then
        echo "check-package: no $tool in $VENV (set VENV, or run scripts/setup.sh)" >&2
        exit 2
    fi
done
export PATH=$VENV/bin:$PATH
work=$(mktemp -d "${TMPDIR:-/tmp}/livemig-package.XXXXXX")
trap 'rm -rf "$work"' EXIT
export ANSIBLE_COLLECTIONS_PATH=$work/collections ANSIBLE_NOCOLOR=1

# Every file of the tarball must match this (extended regular expression, whole path).
allowed='^(MANIFEST\.json|FILES\.json|README\.md|LICENSE|CHANGELOG\.rst|requirements-host\.txt'
allowed+='|docs/[^/]+(/[^/]+)*\.(md|rst|yml|yaml|png|svg)'
allowed+='|changelogs/(changelog\.yaml|config\.yaml|fragments/[^/]+\.ya?ml)'
allowed+='|meta/(runtime\.yml|execution-environment\.yml|ee-requirements\.txt|ee-bindep\.txt)'
allowed+='|playbooks/(tasks/)?[^/]+\.ya?ml'
allowed+='|plugins/(action|doc_fragments|filter|module_utils|modules|plugin_utils|test)/[^/]+\.(py|ya?ml)'
allowed+='|roles/[a-z0-9_]+/(README\.md|(defaults|files|handlers|meta|tasks|templates|vars)/.+)'
allowed+='|tests/config\.yml|tests/unit/[^/]+(/[^/]+)*\.(py|json|ya?ml))$'
# Files the tarball must hold (an over-eager build_ignore fails here).
required=(LICENSE README.md MANIFEST.json FILES.json meta/runtime.yml meta/execution-environment.yml
    meta/ee-requirements.txt meta/ee-bindep.txt playbooks/migrate.yml plugins/modules/qemu_migrate.py
    roles/live_migration/tasks/main.yml requirements-host.txt tests/unit/conftest.py)

fail() {
    echo "check-package: $*" >&2
    exit 1
}

# build SRC OUT: build the collection in SRC into the empty directory OUT, print the tarball's path.
build() {
    ansible-galaxy collection build --output-path "$2" "$1" >/dev/null
    local tarballs=("$2"/livemig-qemu-*.tar.gz)
    [[ -f ${tarballs[0]} ]] || fail "ansible-galaxy built no tarball from $1"
    echo "${tarballs[0]}"
}

files_of() {
    tar -tzf "$1" | grep -v '/$' | sort
}

# offenders TARBALL: its files outside the allow-list, one a line.
offenders() {
    files_of "$1" | grep -Ev "$allowed" || true
}

check_allow_list() {
    local bad
    bad=$(offenders "$1")
    if [[ -n $bad ]]; then
        echo "check-package: $2: files outside the allow-list:" >&2
        printf '    %s\n' "${bad//$'\n'/$'\n'    }" >&2
        return 1
    fi
}

check_required() {
    local list file missing=()
    list=$(files_of "$1")
    for file in "${required[@]}"; do
        grep -qxF "$file" <<<"$list" || missing+=("$file")
    done
    ((${#missing[@]} == 0)) || fail "$2: the tarball lacks ${missing[*]}"
}

counts_by_folder() {
    files_of "$1" | awk -F/ '{ print (NF > 1 ? $1 "/" : "(top level)") }' | sort | uniq -c
}

# --- 1. the tarball of this tree
tarball=$(build "$repo" "$work/dist")
check_allow_list "$tarball" "tarball of $repo" || exit 1
check_required "$tarball" "tarball of $repo"
echo "check-package: $(basename "$tarball"): $(files_of "$tarball" | wc -l) files, all on the allow-list; by folder:"
counts_by_folder "$tarball"

# --- 2. self-test: a dirty copy of the tree
copy=$work/dirty/qemu
mkdir -p "$copy"
rsync -a --exclude=/.git --exclude=/.venv --exclude=/collections --exclude=/tests/guest/out --exclude=/.lab \
    --exclude=/tests/output --exclude=__pycache__ "$repo/" "$copy/"
junk=(.venv/bin/python .ansible/collections/ansible_collections/x/y/galaxy.yml .lab/inventory.yml .pytest_cache/v
    .ci/output.log report.json reports/web1.json benchmarks/results.json benchmarks/results/run1.json
    collections/ansible_collections/livemig/qemu/galaxy.yml tests/output/junit.xml tests/guest/out/vmlinuz
    plugins/modules/__pycache__/qemu_vm.cpython-311.pyc plugins/module_utils/_qmp.pyc
    changelogs/.plugin-cache.yaml livemig-qemu-0.1.0.tar.gz other-1.0.0.tar.gz)
for path in "${junk[@]}"; do
    mkdir -p "$(dirname "$copy/$path")"
    echo junk >"$copy/$path"
done
dirty=$(build "$copy" "$work/dirty-dist")
check_allow_list "$dirty" "self-test, tree with junk" || fail "self-test: build_ignore lets junk through"
list=$(files_of "$dirty")
for path in "${junk[@]}"; do
    if grep -qxF "$path" <<<"$list"; then
        fail "self-test: the tarball of the tree with junk holds $path"
    fi
done
stray=(notes.txt roles/live_migration/molecule/default/molecule.yml tests/integration.py)
for path in "${stray[@]}"; do
    mkdir -p "$(dirname "$copy/$path")"
    echo stray >"$copy/$path"
done
caught=$(offenders "$(build "$copy" "$work/stray-dist")")
for path in "${stray[@]}"; do
    grep -qxF "$path" <<<"$caught" || fail "self-test: the allow-list does not catch the stray file $path"
done
echo "check-package: self-test: ${#junk[@]} junk paths left out, ${#stray[@]} stray files caught by the allow-list"

# --- 3. the shipped docs' links resolve inside the tarball
unpacked=$work/unpacked
mkdir -p "$unpacked"
tar -xzf "$tarball" -C "$unpacked"
if ! python "$repo/scripts/check_links.py" "$unpacked" | sed 's/^/check-package: tarball: /'; then
    fail "links in the tarball's README.md or docs/ do not resolve inside the tarball"
fi
cp "$copy/README.md" "$work/README.md"
for broken in docs/no-such-page.md '#no-such-heading' 'docs/lab.md#no-such-heading'; do
    { cat "$work/README.md"; echo "a broken [link]($broken)"; } >"$copy/README.md"
    if python "$repo/scripts/check_links.py" "$copy" >/dev/null; then
        fail "self-test: scripts/check_links.py does not report the broken link $broken"
    fi
done

# --- 4. the installed tarball's unit tests import only what it ships
ansible-galaxy collection install --offline -p "$work/collections" "$tarball" >/dev/null
installed=$work/collections/ansible_collections/livemig/qemu
if ! collected=$(cd "$work" && python -m pytest -q --collect-only -p no:cacheprovider "$installed/tests/unit" 2>&1); then
    echo "$collected" | tail -n 30 >&2
    fail "pytest cannot collect the unit tests of the installed tarball"
fi
collected=$(tail -n 1 <<<"$collected")
echo "check-package: unit tests of the installed tarball: $collected"

# --- 5. execution environment
ee=$work/ee
mkdir -p "$ee"
name=$(basename "$tarball")
cat >"$ee/execution-environment.yml" <<EOF
---
version: 3
images:
  base_image:
    name: quay.io/fedora/fedora:42
dependencies:
  python_interpreter:
    package_system: python3
    python_path: /usr/bin/python3
  ansible_core:
    package_pip: ansible-core>=2.17
  ansible_runner:
    package_pip: ansible-runner
  galaxy:
    collections:
      - name: collections/$name
        type: file
additional_build_files:
  - src: $tarball
    dest: collections
EOF
ansible-builder create -f "$ee/execution-environment.yml" -c "$ee/context" --output-filename Containerfile >/dev/null
context=$ee/context
[[ -s $context/Containerfile ]] || fail "ansible-builder create wrote no Containerfile"
# shellcheck disable=SC2016  # the Containerfile's own text, $ANSIBLE_... unexpanded
for step in 'ansible-galaxy collection install $ANSIBLE_GALAXY_CLI_COLLECTION_OPTS -r requirements.yml' \
    '/output/scripts/introspect.py introspect' '/output/scripts/install-from-bindep'; do
    grep -qF "$step" "$context/Containerfile" || fail "the Containerfile has no step running: $step"
done
cmp -s "$tarball" "$context/_build/collections/$name" || fail "the build context lacks the tarball _build/collections/$name"
grep -qxF "  - name: collections/$name" "$context/_build/requirements.yml" \
    || grep -qxF -- "- name: collections/$name" "$context/_build/requirements.yml" \
    || fail "the build context's requirements.yml does not install collections/$name"
# The builder stage runs this script on the installed collections; run it the same way on ours.
python "$context/_build/scripts/introspect.py" introspect --write-pip "$ee/requirements.txt" \
    --write-bindep "$ee/bindep.txt" "$work/collections" >/dev/null
requirements() {
    sed -e 's/[[:space:]]*#.*$//' -e '/^[[:space:]]*$/d' "$1"
}
for kind in requirements:ee-requirements.txt bindep:ee-bindep.txt; do
    found=$ee/${kind%%:*}.txt
    ours=$repo/meta/${kind#*:}
    [[ -s $found ]] || fail "introspection found no ${kind%%:*} requirements in the installed collection"
    if ! diff -u <(requirements "$ours") <(requirements "$found") >"$ee/diff"; then
        cat "$ee/diff" >&2
        fail "introspection of the installed collection does not find meta/${kind#*:} (diff above)"
    fi
done
for want in '^matplotlib' '^jmespath' '^openssh-client \[platform:dpkg\]' '^openssh-clients \[platform:rpm\]'; do
    cat "$ee/requirements.txt" "$ee/bindep.txt" | grep -q "$want" || fail "introspection does not report $want"
done
echo "check-package: ansible-builder create: Containerfile and _build/ ready; introspection of the installed" \
    "collection finds: $(requirements "$ee/requirements.txt" | paste -sd, -); $(requirements "$ee/bindep.txt" | paste -sd, -)"
echo "check-package: all passed"
