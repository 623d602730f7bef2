#!/usr/bin/env bash
# Runs the end-to-end proxy test with every zcio process under valgrind memcheck, then
# fails if valgrind reported any error (invalid access, uninitialised value, definite
# leak at a clean exit). Usage: tests/e2e/memcheck.sh path/to/zcio
set -euo pipefail
zcio=$(realpath "$1")
here=$(dirname "$(realpath "$0")")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/zcio" <<WRAP
#!/usr/bin/env bash
exec valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
  --log-file=$work/vg.%p "$zcio" "\$@"
WRAP
chmod +x "$work/zcio"
ZCIO_UNDER_VALGRIND=1 python3 "$here/test_proxy.py" --zcio "$work/zcio"
reports=$(cat "$work"/vg.* 2>/dev/null || true)
if [[ -n "$reports" ]]; then
  printf '%s\n' "$reports"
  echo "memcheck: valgrind reported errors (above)" >&2
  exit 1
fi
echo "memcheck: $(ls "$work"/vg.* | wc -l) zcio processes, no valgrind errors"
