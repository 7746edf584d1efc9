#!/usr/bin/env bash
# Build the eBPF programs (the audit and the egress policy) into OUT_DIR
# (default: ebpf/, where the committed objects live). Reproducible: relative
# source paths, no DWARF (BTF is kept, CO-RE needs it), no .comment, no host
# kernel headers.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here}"
CLANG="${CLANG:-clang-19}"
STRIP="${STRIP:-llvm-strip-19}"
mkdir -p "$out"
cd "$here"
for prog in audit egress; do
	"$CLANG" -target bpfel -mcpu=v3 -O2 -g -Wall -Werror \
		-fdebug-compilation-dir=. -fno-ident -nostdinc -Iinclude \
		-c "src/$prog.bpf.c" -o "$out/$prog.bpf.o.tmp"
	# drop DWARF and anything naming the build host; .BTF and .BTF.ext stay
	"$STRIP" --strip-debug --remove-section=.comment --remove-section=.llvm_addrsig \
		"$out/$prog.bpf.o.tmp" -o "$out/$prog.bpf.o"
	rm -f "$out/$prog.bpf.o.tmp"
done
