//! Waiting for a condition in tests, without fixed sleeps.

use std::fmt::Display;
use std::time::{Duration, Instant};

use crate::error::HarnessError;

/// Polls `check` until it returns `Ok`, backing off from 5 ms to 200 ms between tries.
///
/// Tests wait on conditions (a port is listening, a rule took effect), never on fixed
/// sleeps: fast when the machine is fast, patient when it is loaded. On timeout the error
/// names `what` and carries the last failure, which is usually the real reason.
pub fn eventually<T, E: Display>(
    what: impl Into<String>,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> Result<T, HarnessError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(err) if start.elapsed() >= timeout => {
                return Err(HarnessError::Timeout {
                    what: what.into(),
                    waited: start.elapsed(),
                    last: err.to_string(),
                });
            }
            Err(_) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_success() {
        let mut tries = 0;
        let value = eventually("third try", Duration::from_secs(5), || {
            tries += 1;
            if tries < 3 { Err("not yet") } else { Ok(tries) }
        })
        .unwrap();
        assert_eq!(value, 3);
    }

    #[test]
    fn times_out_with_the_last_failure() {
        let err = eventually("never", Duration::from_millis(30), || {
            Err::<(), _>("still closed")
        })
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("never") && text.contains("still closed"),
            "{text}"
        );
    }
}
