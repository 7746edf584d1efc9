//! Test support for weaver networks: a bridge of the test's own (so concurrent test loomds
//! never share one), Python probes inside weavers, and a fake DNS upstream (real wire format,
//! `simple-dns`; a fake because the real upstream is outside this machine).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Loomd;

/// A bridge with the gateway address on it (loomd adopts it as its weaver bridge), removed
/// when dropped.
#[derive(Debug)]
pub struct Bridge {
    pub name: String,
    pub subnet: String,
    pub gateway: Ipv4Addr,
}

impl Bridge {
    /// `lt<tag>` with `10.<octet>.0.0/24`.
    pub fn new(tag: &str, octet: u8) -> Bridge {
        let name = format!("lt{tag}");
        assert!(name.len() <= 15, "{name}");
        let _ = Command::new("ip").args(["link", "del", &name]).output();
        let gateway = Ipv4Addr::new(10, octet, 0, 1);
        for args in [
            vec!["link", "add", &name, "type", "bridge"],
            vec!["addr", "add", &format!("{gateway}/24"), "dev", &name],
            vec!["link", "set", &name, "up"],
        ] {
            sh_ok("ip", &args);
        }
        Bridge { name, subnet: format!("10.{octet}.0.0/24"), gateway }
    }

    /// The `[network]` section for it.
    pub fn config(&self) -> String {
        format!("[network]\nbridge = \"{}\"\nsubnet = \"{}\"\n", self.name, self.subnet)
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let g = self.gateway.octets();
        let a = addr.octets();
        a[..3] == g[..3] && a[3] > 1 && a[3] < 255
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.name]).output();
    }
}

pub fn sh_ok(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog).args(args).output().unwrap_or_else(|e| panic!("{prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The last lines of loomd's log, for a failure message.
pub fn loomd_log(d: &Loomd) -> String {
    let text = std::fs::read_to_string(d.log_path()).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(40).collect();
    format!("loomd log (tail):\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
}

fn py_code(prelude: &str, script: &str) -> String {
    format!("{prelude}\n{script}\nprint('PROBE-DONE', flush=True)\n")
}

/// Creates a private weaver whose first process is `python3 -c PRELUDE+script`, waits for its
/// end, and returns its log; fails unless the probe ran to its end.
pub fn py_probe(d: &Loomd, name: &str, flags: &[&str], prelude: &str, script: &str) -> String {
    let code = py_code(prelude, script);
    let mut args = vec!["weaver", "create", "--name", name, "--network", "private"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "/usr/bin/python3", "-c", &code]);
    let w = d.cli_json(&args);
    assert_eq!(w["state"], "running", "{w}");
    d.wait_for(name, "exited", Duration::from_secs(60), |v| v["state"] == "exited" || v["state"] == "failed");
    let log = d.logs(name);
    assert!(log.contains("PROBE-DONE"), "the probe of {name} did not run to its end:\n{log}\n{}", loomd_log(d));
    log
}

/// `python3 -c PRELUDE+script` in a running weaver through `loom weaver exec`; its stdout.
pub fn py_exec(d: &Loomd, name: &str, prelude: &str, script: &str) -> String {
    let out = d.cli(&["weaver", "exec", name, "--", "/usr/bin/python3", "-c", &py_code(prelude, script)]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("PROBE-DONE"),
        "exec in {name} did not run to its end ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// What the fake upstream answers for a name: an address and a TTL, or NXDOMAIN.
pub type Answer = Box<dyn Fn(&str) -> Option<(Ipv4Addr, u32)> + Send>;

/// A fake DNS upstream on `ip`: answers `A` questions as `answer` says and records every name
/// it was asked (and every packet it could not parse).
#[derive(Debug)]
pub struct FakeDns {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl FakeDns {
    pub fn start(ip: Ipv4Addr, answer: Answer) -> FakeDns {
        use simple_dns::rdata::{A, RData};
        use simple_dns::{CLASS, Packet, PacketFlag, QTYPE, RCODE, ResourceRecord, TYPE};
        let sock = UdpSocket::bind((ip, 0)).unwrap();
        let addr = sock.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf) else { return };
                let Ok(query) = Packet::parse(&buf[..n]) else {
                    seen2.lock().unwrap().push(format!("<unparsed {n} bytes>"));
                    continue;
                };
                let Some(q) = query.questions.first().cloned() else { continue };
                let name = q.qname.to_string().to_ascii_lowercase();
                seen2.lock().unwrap().push(name.clone());
                let mut p = Packet::new_reply(query.id());
                p.set_flags(PacketFlag::RECURSION_AVAILABLE | PacketFlag::RECURSION_DESIRED);
                p.questions.push(q.clone());
                match answer(&name) {
                    Some((a, ttl)) if q.qtype == QTYPE::TYPE(TYPE::A) => {
                        p.answers.push(ResourceRecord::new(q.qname.clone(), CLASS::IN, ttl, RData::A(A::from(a))));
                    }
                    Some(_) => {}
                    None => *p.rcode_mut() = RCODE::NameError,
                }
                if let Ok(bytes) = p.build_bytes_vec() {
                    let _ = sock.send_to(&bytes, from);
                }
            }
        });
        FakeDns { addr, seen }
    }

    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// An operator's side of a weaver's sshd (`--ssh`): a key pair of its own and the host's
/// OpenSSH client, pinned to the host key loomd reports, never reading ~/.ssh.
pub struct SshClient {
    pub dir: tempfile::TempDir,
}

impl SshClient {
    pub fn new() -> SshClient {
        let dir = tempfile::tempdir().unwrap();
        for name in ["id", "stranger"] {
            let path = dir.path().join(name);
            sh_ok("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-C", name, "-f", path.to_str().unwrap()]);
        }
        SshClient { dir }
    }

    pub fn public_key_file(&self) -> String {
        self.dir.path().join("id.pub").display().to_string()
    }

    /// Pins `host_key` (as `loom weaver inspect` shows it) for `addr`.
    pub fn trust(&self, addr: &str, host_key: &str) {
        std::fs::write(self.dir.path().join("known_hosts"), format!("{addr} {host_key}\n")).unwrap();
    }

    /// `ssh root@addr ARGS...` with key `key` ("id" or "stranger"), host key checking strict.
    pub fn ssh(&self, key: &str, addr: &str, args: &[&str]) -> std::process::Output {
        let p = |f: &str| self.dir.path().join(f).display().to_string();
        Command::new("ssh")
            .args(["-F", "/dev/null", "-i", &p(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .args(["-o", &format!("UserKnownHostsFile={}", p("known_hosts")), "-o", "StrictHostKeyChecking=yes"])
            .args(["-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", &format!("root@{addr}")])
            .args(args)
            .env_remove("SSH_AUTH_SOCK")
            .output()
            .unwrap()
    }
}

/// FAKES of Tailscale's `tailscaled` and `tailscale` (the real ones need Tailscale's servers,
/// which this machine cannot reach, and are not packaged here): they record their arguments
/// and a hash of the auth key they were handed, in the weaver's `/.loom`, and `tailscale up`
/// fails for a node whose name holds "fail". They live under the host's `/usr`, which is the
/// weavers' own, and go with the guard.
pub struct FakeTailscale(pub std::path::PathBuf);

impl FakeTailscale {
    pub fn install() -> FakeTailscale {
        let dir = std::path::PathBuf::from(format!("/usr/local/lib/loom-fake-tailscale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tailscaled = "#!/bin/sh\necho \"$@\" > /.loom/fake-tailscaled.args\nexec /usr/bin/python3 -c 'import socket, time; s = socket.socket(socket.AF_UNIX); s.bind(\"/run/tailscale/tailscaled.sock\"); s.listen(1); time.sleep(600)'\n";
        let tailscale = "#!/bin/sh\necho \"$@\" > /.loom/fake-tailscale.args\nfor a in \"$@\"; do case \"$a\" in --auth-key=file:*) sha256sum < \"${a#--auth-key=file:}\" | cut -d' ' -f1 > /.loom/fake-tailscale.keyhash;; --hostname=*fail*) fail=1;; esac; done\n[ -z \"$fail\" ] || { echo 'fake tailscale: backend error: invalid key' >&2; exit 1; }\n";
        for (name, body) in [("tailscaled", tailscaled), ("tailscale", tailscale)] {
            std::fs::write(dir.join(name), body).unwrap();
            sh_ok("chmod", &["0755", dir.join(name).to_str().unwrap()]);
        }
        FakeTailscale(dir)
    }
}

impl FakeTailscale {
    /// `[secrets]` (the sops-nix test file, whose `test_key` is "test_value") and `[tailscale]`
    /// with these fakes as the binaries.
    pub fn config(&self) -> String {
        let data = std::env::var_os("LOOM_TESTDATA")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata"));
        format!(
            "[secrets]\nfile = \"{}\"\nage_key_file = \"{}\"\n[tailscale]\nenable = true\nauth_key_secret = \"test_key\"\ntags = [\"tag:loom-ci\"]\ntailscaled = \"{dir}/tailscaled\"\ntailscale = \"{dir}/tailscale\"\n",
            data.join("sops-nix/secrets.yaml").display(),
            data.join("sops-nix/age-keys.txt").display(),
            dir = self.0.display(),
        )
    }
}

impl Drop for FakeTailscale {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every file under `dir` (not following symlinks) whose bytes contain `needle`.
pub fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = vec![];
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for e in entries.flatten() {
        let (path, ty) = (e.path(), e.file_type().unwrap());
        if ty.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if ty.is_file() && std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
            found.push(path);
        }
    }
    found
}
