#!/usr/bin/env bash
# docs/benchmarks.md "Declared weavers": run as root from the workspace, after cargo build -p loomd -p loom-cli.
# 50 declared weavers; then 10 SIGHUPs with nothing changed: each reconcile is a no-op plan.
set -euo pipefail
dir=$(mktemp -d /var/tmp/loom-bench.XXXX)
{ echo '[weaver]'; echo 'network = "none"'
  for i in $(seq -w 1 50); do printf '[weavers.w%s]\ncommand = ["sleep", "600"]\n' "$i"; done; } >"$dir/loomd.toml"
LOOMD_LOG=info ${LOOMD:-target/debug/loomd} --config "$dir/loomd.toml" --socket "$dir/s" --state-dir "$dir/state" --backend nspawn >"$dir/log" 2>&1 &
pid=$!
until [ "$(grep -c 'declared weavers reconciled' "$dir/log" 2>/dev/null)" -ge 1 ]; do sleep 0.5; done
grep 'declared weavers reconciled' "$dir/log" | tail -1
for _ in $(seq 10); do
  n=$(grep -c 'declared weavers reconciled' "$dir/log"); kill -HUP $pid
  until [ "$(grep -c 'declared weavers reconciled' "$dir/log")" -gt "$n" ]; do sleep 0.05; done
done
grep 'declared weavers reconciled' "$dir/log" | tail -10 | grep -o 'unchanged=[0-9]* .*elapsed_ms=[0-9.]*'
${LOOM:-target/debug/loom} --socket "$dir/s" down -f "$dir/loomd.toml" >/dev/null 2>&1 || true
for w in $(${LOOM:-target/debug/loom} --socket "$dir/s" --json weaver ps | python3 -c 'import json,sys; print(" ".join(w["id"] for w in json.load(sys.stdin)))'); do
  ${LOOM:-target/debug/loom} --socket "$dir/s" weaver rm --force "$w" >/dev/null; done
kill $pid; wait $pid || true; rm -rf "$dir"
