//! A weaver's log with a size cap (nspawn backend): the shim pumps the weaver's output into
//! it. When `log` reaches half the cap it becomes `log.1` (replacing the one before) and a
//! new `log` starts, so the two together never hold more than the cap and the latest half of
//! it at least is always there: a weaver that prints forever cannot fill the host's disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The rotated-away older half of a log, beside it.
pub fn older(log: &Path) -> PathBuf {
    let mut name = log.file_name().unwrap_or_default().to_os_string();
    name.push(".1");
    log.with_file_name(name)
}

#[derive(Debug)]
pub struct CappedLog {
    path: PathBuf,
    half: u64,
    file: File,
    written: u64,
}

impl CappedLog {
    /// Appends to `path`, counting what an earlier run left in it.
    pub fn open(path: &Path, cap: u64) -> io::Result<CappedLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(CappedLog { path: path.to_path_buf(), half: (cap / 2).max(1), file, written })
    }

    /// Writes all of `buf`, rotating once the current file holds half the cap.
    pub fn write(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            if self.written >= self.half {
                self.rotate()?;
            }
            let n = buf.len().min((self.half - self.written) as usize);
            self.file.write_all(&buf[..n])?;
            self.written += n as u64;
            buf = &buf[n..];
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        std::fs::rename(&self.path, older(&self.path))?;
        self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_and_its_older_half_stay_within_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "from an earlier run\n").unwrap();
        let mut log = CappedLog::open(&path, 100).unwrap();
        let mut all = String::from("from an earlier run\n");
        for i in 0..1000 {
            let line = format!("line {i}\n");
            log.write(line.as_bytes()).unwrap();
            all += &line;
        }
        let (now, before) = (std::fs::read_to_string(&path).unwrap(), std::fs::read_to_string(older(&path)).unwrap());
        assert!(now.len() <= 50 && before.len() == 50, "{} + {}", now.len(), before.len());
        assert!(all.ends_with(&format!("{before}{now}")), "the latest output, in order: {before:?} {now:?}");
        // A reopened log counts what is there.
        let mut again = CappedLog::open(&path, 100).unwrap();
        again.write(&[b'x'; 60]).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() <= 50);
    }
}
