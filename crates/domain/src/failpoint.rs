//! Env-driven failpoints: `HOLDFAST_FAILPOINTS=start.after_provision,…`
//! makes the server abort (as a `kill -9` would end it) when it reaches a
//! named crash window. Tests use them to crash the server at each window,
//! start it again, and check that nothing was lost and nothing runs twice.

use std::sync::OnceLock;

fn enabled() -> &'static Vec<String> {
    static POINTS: OnceLock<Vec<String>> = OnceLock::new();
    POINTS.get_or_init(|| {
        std::env::var("HOLDFAST_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

/// Aborts the process if the failpoint `name` is enabled.
pub fn hit(name: &str) {
    if enabled().iter().any(|p| p == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

/// Whether the failpoint `name` is enabled, for the failpoints that do not
/// abort but make an operation fail as the outside world can (a full disk).
pub fn active(name: &str) -> bool {
    enabled().iter().any(|p| p == name)
}
