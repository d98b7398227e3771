#!/bin/sh
# names_without_semicolons.sh GRADC_TESTS — fails when a test case's name has a ';' (ctest cuts
# a discovered test's name there and then runs no test case at all), or when the listing did
# not complete: Catch2 v2 exits with the number of names listed (modulo 256), so any other
# status (a crash, an exception at start-up) fails too.
out=$("$1" --list-test-names-only)
rc=$?
n=$(printf '%s\n' "$out" | grep -c .)
if [ "$n" -eq 0 ] || [ "$rc" -ne $((n % 256)) ]; then
    echo "$1 --list-test-names-only: exit status $rc after $n names"
    exit 1
fi
! printf '%s\n' "$out" | grep -n ';'
