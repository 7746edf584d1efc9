#!/usr/bin/env bash
# CI: rebuild the eBPF programs in a temporary directory and fail if a result
# differs from its committed object.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$here/build.sh" "$tmp"
for prog in audit egress; do
	if ! cmp -s "$tmp/$prog.bpf.o" "$here/$prog.bpf.o"; then
		echo "ebpf/$prog.bpf.o does not match its source: run ebpf/build.sh and commit the result" >&2
		exit 1
	fi
	echo "ebpf/$prog.bpf.o matches its source"
done
