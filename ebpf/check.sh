#!/usr/bin/env bash
# CI: rebuild the audit programs in a temporary directory and fail if the
# result differs from the committed object.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$here/build.sh" "$tmp"
if ! cmp -s "$tmp/audit.bpf.o" "$here/audit.bpf.o"; then
	echo "ebpf/audit.bpf.o does not match its source: run ebpf/build.sh and commit the result" >&2
	exit 1
fi
echo "ebpf/audit.bpf.o matches its source"
