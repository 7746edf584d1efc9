//! The one parser of the kernel's mount tables (`/proc/PID/mounts` and `/proc/PID/mountinfo`);
//! callers read the file, this only parses what they pass in.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// One mounted file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: String,
    pub target: PathBuf,
    pub fstype: String,
    /// The mount's options, then (for mountinfo) the super block's, as `/proc/PID/mounts`
    /// shows them together: `ro`, `nosuid`, and a v1 cgroup's controllers (`memory`, …).
    pub options: Vec<String>,
}

impl Mount {
    pub fn has_option(&self, option: &str) -> bool {
        self.options.iter().any(|o| o == option)
    }
}

/// Parses `/proc/PID/mounts`: `source target fstype options dump pass`. Lines that do not
/// have those fields are skipped (the kernel writes none, but nothing here panics on them).
pub fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let (source, target, fstype, options) = (f.next()?, f.next()?, f.next()?, f.next()?);
            Some(Mount {
                source: unescape_str(source),
                target: unescape_path(target),
                fstype: unescape_str(fstype),
                options: split_options([options]),
            })
        })
        .collect()
}

/// Parses `/proc/PID/mountinfo`: `id parent major:minor root target options [optional…] -
/// fstype source super-options`.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            let (target, options) = (fields.get(4)?, fields.get(5)?);
            if sep < 6 {
                return None;
            }
            let (fstype, source) = (fields.get(sep + 1)?, fields.get(sep + 2)?);
            let super_options = fields.get(sep + 3).copied().unwrap_or("");
            Some(Mount {
                source: unescape_str(source),
                target: unescape_path(target),
                fstype: unescape_str(fstype),
                options: split_options([*options, super_options]),
            })
        })
        .collect()
}

fn split_options<'a>(lists: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    lists.into_iter().flat_map(|l| l.split(',')).filter(|o| !o.is_empty()).map(unescape_str).collect()
}

/// The kernel writes space, tab, newline and backslash in these fields as `\ooo` octal.
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal.map(|d| d.iter().fold(0u32, |n, c| n * 8 + u32::from(c - b'0'))) {
            Some(n) if n <= 0xff => {
                out.push(n as u8);
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

fn unescape_str(field: &str) -> String {
    String::from_utf8_lossy(&unescape(field)).into_owned()
}

fn unescape_path(field: &str) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape(field)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,memory 0 0
/dev/sda1 /mnt/with\\040space ext4 ro,relatime 0 0
truncated line
";

    const MOUNTINFO: &str = "\
35 24 0:30 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
41 24 0:36 / /sys/fs/cgroup/pids ro,nosuid shared:17 - cgroup cgroup rw,pids
99 24 0:1 / /odd
";

    #[test]
    fn mounts_give_type_target_and_options_unescaped() {
        let m = parse_mounts(MOUNTS);
        assert_eq!(m.len(), 3);
        assert_eq!((m[0].fstype.as_str(), m[0].target.to_str()), ("cgroup2", Some("/sys/fs/cgroup/unified")));
        assert!(m[1].has_option("memory") && !m[1].has_option("mem"));
        assert_eq!(m[2].target, PathBuf::from("/mnt/with space"));
        assert!(m[2].has_option("ro"));
    }

    #[test]
    fn mountinfo_joins_mount_and_super_options_after_the_separator() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 2);
        assert_eq!((m[1].fstype.as_str(), m[1].source.as_str()), ("cgroup", "cgroup"));
        assert_eq!(m[1].target, PathBuf::from("/sys/fs/cgroup/pids"));
        assert!(m[1].has_option("ro") && m[1].has_option("pids"));
        assert!(m[0].has_option("nsdelegate") && !m[0].has_option("ro"));
    }

    #[test]
    fn escapes_that_are_not_octal_bytes_are_kept() {
        assert_eq!(unescape("a\\134b\\9\\777\\04"), b"a\\b\\9\\777\\04");
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_without_panicking(text in "\\PC*( - \\PC*)?(\n\\PC*)*") {
            let _ = parse_mounts(&text);
            let _ = parse_mountinfo(&text);
        }
    }
}
