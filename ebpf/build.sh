#!/usr/bin/env bash
# Build the audit programs into OUT_DIR (default: ebpf/, where the committed
# object lives). Reproducible: relative source paths, no DWARF (BTF is kept,
# CO-RE needs it), no .comment, no host kernel headers.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here}"
CLANG="${CLANG:-clang-19}"
STRIP="${STRIP:-llvm-strip-19}"
mkdir -p "$out"
cd "$here"
"$CLANG" -target bpfel -mcpu=v3 -O2 -g -Wall -Werror \
	-fdebug-compilation-dir=. -fno-ident -nostdinc -Iinclude \
	-c src/audit.bpf.c -o "$out/audit.bpf.o.tmp"
# drop DWARF and anything naming the build host; .BTF and .BTF.ext stay
"$STRIP" --strip-debug --remove-section=.comment --remove-section=.llvm_addrsig \
	"$out/audit.bpf.o.tmp" -o "$out/audit.bpf.o"
rm -f "$out/audit.bpf.o.tmp"
