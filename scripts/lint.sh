#!/usr/bin/env bash
# Static checks of the livemig.qemu collection, in this order:
#   1. ansible-lint (offline, production profile; settings in .ansible-lint)
#   2. antsibull-changelog lint (changelog fragments and changelogs/changelog.yaml)
#   3. ansible-doc renders every module, every filter and every role with meta/argument_specs.yml
#   4. antsibull-docs: lint-collection-docs --plugin-docs, then the collection's RST docs are generated (one page per
#      module, filter and role), as a docs site would build them
#   5. the relative links in README.md and docs/ resolve (scripts/check_links.py)
#   6. scripts/sanity.sh (ansible-test sanity)
# Every step runs; the script exits non-zero when any of them failed.
#
# Environment:
#   VENV               the venv with ansible-core, ansible-lint, antsibull-changelog, antsibull-docs
#                      (default: <repo>/.venv)
#   LINT_SKIP_SANITY=1 leave out step 6
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$REPO/.venv}
case $VENV in /*) ;; *) VENV=$REPO/$VENV ;; esac
export VENV
for tool in ansible-lint antsibull-changelog antsibull-docs ansible-doc; do
    if [[ ! -x $VENV/bin/$tool ]]; then
        echo "lint: no $tool in $VENV (set VENV)" >&2
        exit 2
    fi
done
export PATH=$VENV/bin:$PATH
export ANSIBLE_NOCOLOR=1 NO_COLOR=1 PY_COLORS=0

# Make the collection importable as livemig.qemu from this checkout, whatever collections/ holds.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/livemig-lint.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/ansible_collections/livemig"
ln -s "$REPO" "$WORK/ansible_collections/livemig/qemu"
export ANSIBLE_COLLECTIONS_PATH=$WORK
cd "$REPO" || exit 2

failed=()
summary=()
step() {
    local name=$1 start=$SECONDS rc=0
    shift
    echo "=== $name"
    "$@" || rc=$?
    summary+=("$(printf '%-20s %s %4ss' "$name" "$([[ $rc == 0 ]] && echo ok || echo "FAILED (exit $rc)")" $((SECONDS - start)))")
    [[ $rc == 0 ]] || failed+=("$name")
}

ansible_doc_all() {
    local rc=0 path name kind out err
    out=$WORK/doc.out
    err=$WORK/doc.err
    for path in plugins/modules/*.py plugins/filter/*.yml roles/*/meta/argument_specs.yml; do
        [[ -e $path ]] || continue
        case $path in
            plugins/modules/*) name=$(basename "$path" .py); kind=module ;;
            plugins/filter/*) name=$(basename "$path" .yml); kind=filter ;;
            *) name=${path#roles/}; name=${name%%/*}; kind=role ;;
        esac
        [[ $name == __init__ ]] && continue
        if ! ansible-doc -t "$kind" "livemig.qemu.$name" >"$out" 2>"$err"; then
            echo "ansible-doc: $kind livemig.qemu.$name: ansible-doc failed"
            rc=1
        elif ! grep -q "livemig\.qemu\.$name" "$out" || grep -q '\[\(WARNING\|ERROR\|DEPRECATION WARNING\)\]' "$err"; then
            echo "ansible-doc: $kind livemig.qemu.$name does not render cleanly"
            rc=1
        else
            echo "ansible-doc: $kind livemig.qemu.$name ok ($(wc -l <"$out") lines)"
            continue
        fi
        sed 's/^/    /' "$err" "$out" | head -n 40
    done
    return "$rc"
}

changelog_lint() {
    antsibull-changelog lint && antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml
}

# The docs as a docs site builds them. A page missing for a module, filter or role fails too.
collection_docs() {
    local collection=$WORK/ansible_collections/livemig/qemu rst=$WORK/rst rc=0 path page
    antsibull-docs lint-collection-docs --plugin-docs "$collection" || rc=1
    mkdir -m 0700 "$rst"
    antsibull-docs collection --use-current --fail-on-error --squash-hierarchy --dest-dir "$rst" livemig.qemu || return 1
    for path in plugins/modules/*.py plugins/filter/*.yml roles/*/meta/argument_specs.yml; do
        case $path in
            plugins/modules/*) page=$(basename "$path" .py)_module.rst ;;
            plugins/filter/*) page=$(basename "$path" .yml)_filter.rst ;;
            *) page=${path#roles/}; page=${page%%/*}_role.rst ;;
        esac
        [[ $page == __init___module.rst ]] && continue
        if [[ ! -s $rst/$page ]]; then
            echo "antsibull-docs: no $page for $path"
            rc=1
        fi
    done
    echo "antsibull-docs: $(find "$rst" -name '*.rst' | wc -l) RST pages"
    return "$rc"
}

step ansible-lint ansible-lint --offline --profile production --nocolor
step changelog changelog_lint
step ansible-doc ansible_doc_all
step antsibull-docs collection_docs
step doc-links "$VENV/bin/python" scripts/check_links.py
if [[ ${LINT_SKIP_SANITY:-0} != 1 ]]; then
    step sanity "$REPO/scripts/sanity.sh"
fi

echo "=== summary"
printf '%s\n' "${summary[@]}"
if ((${#failed[@]})); then
    echo "lint: failed: ${failed[*]}"
    exit 1
fi
echo "lint: all passed"
