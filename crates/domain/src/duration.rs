//! Durations as operators write them on the command line: `2s`, `5m`, `7d`.

use std::str::FromStr;
use std::time::Duration;

/// Parses `2s`, `5m`, `7d`, `1h30m`, `250ms`. A bare number is rejected: a
/// grace period without a unit is too easy to get wrong by a factor of 1000.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".to_owned());
    }
    if text.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "duration {text:?} needs a unit, for example {text}s"
        ));
    }
    humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

/// A clap-friendly wrapper around [`parse_duration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationArg(pub Duration);

impl FromStr for DurationArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(DurationArg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("7").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
