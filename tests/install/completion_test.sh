#!/usr/bin/env bash
# completion_test.sh BUILD WORK — cmake --install puts the manual page and the bash completion
# in place, and the completion completes commands, options and option values from what the
# installed gradc says of itself.
set -euo pipefail
build=$1 work=$2
rm -rf "$work"
cmake --install "$build" --prefix "$work/prefix" > /dev/null
fail() { echo "FAILED: $*" >&2; exit 1; }
page=$work/prefix/share/man/man1/gradc.1
[[ -f $page ]] || fail "no manual page at $page"
grep -q '^\.TH GRADC 1' "$page" || fail "the manual page has no .TH line"
for c in $("$work/prefix/bin/gradc" --help | awk '/^commands:/ {on = 1; next} on && /^  [a-z]/ {print $1}'); do
    grep -q "^\.B $c" "$page" || fail "the manual page does not describe $c"
done
# shellcheck source=/dev/null
source "$work/prefix/share/bash-completion/completions/gradc"
gradc=$work/prefix/bin/gradc
complete_words() {
    COMP_WORDS=("$@")
    COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
    COMPREPLY=()
    _gradc
    echo "${COMPREPLY[*]}"
}
check() { [[ $1 == "$2" ]] || fail "completing '$3' gave '$1', expected '$2'"; }
check "$(complete_words "$gradc" gra)" "grads" "gradc gra"
check "$(complete_words "$gradc" help pl)" "plot" "gradc help pl"
check "$(complete_words "$gradc" grads m.nn --form)" "--format" "gradc grads m.nn --form"
check "$(complete_words "$gradc" train m.nn --log-e)" "--log-every" "gradc train m.nn --log-e"
check "$(complete_words "$gradc" train m.nn --optimizer "")" "sgd adam" "gradc train m.nn --optimizer"
check "$(complete_words "$gradc" grads m.nn --format "")" "table json csv" "gradc grads m.nn --format"
check "$(complete_words "$gradc" grads m.nn --plot-scale l)" "linear log" "gradc grads --plot-scale l"
check "$(complete_words "$gradc" train m.nn --no-progress --log-e)" "--log-every" "gradc train --no-progress --log-e"
check "$(complete_words "$gradc" dump m.nn --emit gr)" "graph grad grad-dot" "gradc dump m.nn --emit gr"
echo "ok"
