#!/usr/bin/env bash
# CI: every tracked .nix file must parse (`nix-instantiate --parse`, Debian's nix-bin). Run
# from .ci/run; fails on the first file that does not, naming it.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nix-instantiate >/dev/null 2>&1; then
  echo "nix/parse-all.sh: nix-instantiate is missing: apt-get install nix-bin" >&2
  exit 1
fi
n=0
while IFS= read -r -d '' f; do
  if ! out="$(nix-instantiate --parse "$f" 2>&1 >/dev/null)"; then
    echo "nix/parse-all.sh: $f does not parse:" >&2
    grep -v "build-users-group" <<<"$out" >&2
    exit 1
  fi
  n=$((n + 1))
done < <(git ls-files -z -- '*.nix'; git ls-files -z --others --exclude-standard -- '*.nix')
[ "$n" -gt 0 ] || { echo "nix/parse-all.sh: no .nix files found" >&2; exit 1; }
echo "nix/parse-all.sh: $n .nix files parse"
