//! The device nodes a weaver may open: one list, from which both backends derive their
//! rules (cgroup v1 `devices.allow` lines for the nspawn backend, systemd's `DeviceAllow=`
//! for the systemd backend). Nothing else of the host's /dev.

/// One character device a weaver may open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    pub major: u32,
    /// `None`: every minor (the pseudo-terminals).
    pub minor: Option<u32>,
    /// How systemd's `DeviceAllow=` names it: a node, or a `char-` class from /proc/devices.
    pub systemd_name: &'static str,
    /// Whether systemd's `DevicePolicy=closed` allows it already (the pseudo devices).
    pub in_closed_policy: bool,
}

const fn dev(major: u32, minor: Option<u32>, systemd_name: &'static str, in_closed_policy: bool) -> Device {
    Device { major, minor, systemd_name, in_closed_policy }
}

/// null, zero, full, random, urandom, the controlling terminal, ptmx and the
/// pseudo-terminals: what nspawn's own /dev holds.
pub const WEAVER_DEVICES: [Device; 8] = [
    dev(1, Some(3), "/dev/null", true),
    dev(1, Some(5), "/dev/zero", true),
    dev(1, Some(7), "/dev/full", true),
    dev(1, Some(8), "/dev/random", true),
    dev(1, Some(9), "/dev/urandom", true),
    dev(5, Some(0), "/dev/tty", false),
    dev(5, Some(2), "/dev/ptmx", false),
    dev(136, None, "char-pts", false),
];

/// The cgroup v1 `devices.allow` lines (read, write, mknod) for [`WEAVER_DEVICES`].
pub fn cgroup_v1_rules() -> Vec<String> {
    WEAVER_DEVICES
        .iter()
        .map(|d| match d.minor {
            Some(minor) => format!("c {}:{minor} rwm", d.major),
            None => format!("c {}:* rwm", d.major),
        })
        .collect()
}

/// systemd's `DeviceAllow=` pairs (read, write) for the devices `DevicePolicy=closed` does
/// not allow already.
pub fn systemd_device_allow() -> Vec<(String, String)> {
    WEAVER_DEVICES
        .iter()
        .filter(|d| !d.in_closed_policy)
        .map(|d| (d.systemd_name.to_string(), "rw".to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_derive_the_same_devices() {
        assert_eq!(
            cgroup_v1_rules(),
            ["c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm", "c 5:2 rwm", "c 136:* rwm"]
        );
        let rw = |d: &str| (d.to_string(), "rw".to_string());
        assert_eq!(systemd_device_allow(), [rw("/dev/tty"), rw("/dev/ptmx"), rw("char-pts")]);
    }
}
