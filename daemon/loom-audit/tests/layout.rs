//! The C event structs (ebpf/include/loom_audit.h) and their Rust mirrors
//! (src/layout.rs) agree on every size, offset, field size and constant.
//! A C compiler prints what the header really means; no root needed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use loom_audit::layout::{self, FieldLayout};

fn header_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ebpf/include")
}

fn compiler() -> Option<String> {
    for cc in ["clang-19", "clang", "cc", "gcc"] {
        if Command::new(cc).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return Some(cc.to_string());
        }
    }
    None
}

/// Compile and run a C program that prints `struct field offset size` for
/// each row Rust knows, and `NAME value` for each constant.
fn c_view(rows: &[FieldLayout], constants: &[(&str, i64)]) -> Vec<String> {
    let cc = match compiler() {
        Some(cc) => cc,
        None => {
            // the layout check is mandatory in CI, which installs clang-19
            panic!("no C compiler (clang-19, clang, cc, gcc) found; install clang-19 to run the layout test");
        }
    };
    let mut src = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n\
         typedef unsigned char __u8; typedef unsigned short __u16; typedef unsigned int __u32;\n\
         typedef unsigned long long __u64; typedef int __s32; typedef long long __s64;\n\
         #include \"loom_audit.h\"\nint main(void) {\n",
    );
    for r in rows {
        if r.field.is_empty() {
            src.push_str(&format!("printf(\"{s} - 0 %zu\\n\", sizeof(struct {s}));\n", s = r.strukt));
        } else {
            src.push_str(&format!(
                "printf(\"{s} {f} %zu %zu\\n\", offsetof(struct {s}, {f}), sizeof(((struct {s} *)0)->{f}));\n",
                s = r.strukt,
                f = r.field
            ));
        }
    }
    for (name, _) in constants {
        src.push_str(&format!("printf(\"{name} %lld\\n\", (long long)({name}));\n"));
    }
    src.push_str("return 0; }\n");
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("layout.c");
    let exe = dir.path().join("layout");
    std::fs::write(&c, src).unwrap();
    let out = Command::new(&cc).arg("-Wall").arg("-I").arg(header_dir()).arg(&c).arg("-o").arg(&exe).output().unwrap();
    assert!(
        out.status.success(),
        "the header and the Rust mirror name different fields ({cc} failed):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&exe).output().unwrap();
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}

#[test]
fn c_structs_and_rust_mirrors_agree() {
    let rows = layout::layout_table();
    let constants = layout::constant_table();
    let rust: Vec<String> = rows
        .iter()
        .map(|r| {
            if r.field.is_empty() {
                format!("{} - 0 {}", r.strukt, r.size)
            } else {
                format!("{} {} {} {}", r.strukt, r.field, r.offset, r.size)
            }
        })
        .chain(constants.iter().map(|(n, v)| format!("{n} {v}")))
        .collect();
    let c = c_view(&rows, &constants);
    assert_eq!(c, rust, "C (left) and Rust (right) layouts differ");

    // Every byte of every struct is a named field (padding is explicit), so
    // a C field the Rust mirror lacks would show up as missing bytes here.
    let mut by_struct: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for r in &rows {
        let e = by_struct.entry(r.strukt).or_default();
        if r.field.is_empty() {
            e.0 = r.size;
        } else {
            e.1 += r.size;
        }
    }
    for (s, (size, sum)) in by_struct {
        assert_eq!(size, sum, "struct {s}: fields cover {sum} of {size} bytes");
        assert_eq!(size % 8, 0, "struct {s} must be a multiple of 8 bytes");
    }
}

#[test]
fn op_values_in_the_header_all_have_rust_names() {
    let header = std::fs::read_to_string(header_dir().join("loom_audit.h")).unwrap();
    let mut seen = 0;
    for line in header.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("LOOM_OP_") else { continue };
        let (name, value) = rest.trim_end_matches(',').split_once(" = ").unwrap();
        let value: u32 = value.parse().unwrap();
        let rust = layout::op_name(value).unwrap_or_else(|| panic!("LOOM_OP_{name} = {value} has no Rust name"));
        let expected = if name == "EXEC" { "execve".to_string() } else { name.to_lowercase() };
        assert_eq!(rust, expected, "LOOM_OP_{name}");
        seen += 1;
    }
    assert_eq!(seen, layout::OPS.len(), "the header and layout::OPS list different ops");
}
