//! Waiting for a weaver to reach a state, the same against any loomd the tests start (a
//! host one in `common`, one inside a booted systemd in `common_systemd`).

use std::time::{Duration, Instant};

/// Calls `inspect` every 50 ms until `pred` holds of what it returns, and returns that; past
/// `timeout` it fails, saying `key` never became `what` and adding what `context` tells.
pub fn wait_for_state(
    key: &str,
    what: &str,
    timeout: Duration,
    inspect: impl Fn() -> serde_json::Value,
    pred: impl Fn(&serde_json::Value) -> bool,
    context: impl Fn() -> String,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let v = inspect();
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{key} never became {what}: {v}{}", context());
        std::thread::sleep(Duration::from_millis(50));
    }
}
