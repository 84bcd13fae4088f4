//! Bounds on what clients choose: the names of dynamic docs, and how many dynamic rooms one
//! client address may open per minute. (Awareness states per connection are bounded in the
//! room; see `ServerOptions::max_awareness_states`.)

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::lock::lock;

/// The window of [`OpenRate`].
const WINDOW: Duration = Duration::from_secs(60);

/// Checks a dynamic doc's name: 1 to `max_len` bytes of ASCII letters, digits, `-`, `_` and
/// `.`, not starting with `.`. Such a name is its own storage name (`SqliteStorage` keeps
/// these characters as they are in the file name), so names and files match one to one.
pub(crate) fn check_room_name(name: &str, max_len: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    if name.len() > max_len {
        return Err(format!("longer than {max_len} bytes"));
    }
    if name.starts_with('.') {
        return Err("starts with `.`".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{c:?} is not allowed (letters, digits, `-`, `_` and `.` are)"
        ));
    }
    Ok(())
}

/// Counts the dynamic rooms each client address opened in its current one-minute window.
pub(crate) struct OpenRate {
    per_minute: usize,
    state: Mutex<Windows>,
}

#[derive(Default)]
struct Windows {
    /// Per address: when its window started, and the rooms opened in it.
    clients: HashMap<IpAddr, (Instant, usize)>,
    /// When expired windows were last dropped.
    swept: Option<Instant>,
}

impl OpenRate {
    pub fn new(per_minute: usize) -> OpenRate {
        OpenRate {
            per_minute,
            state: Mutex::default(),
        }
    }

    /// Counts one room opened by `peer`, unless it already opened `per_minute` in its
    /// window: then `false`. The map holds only addresses that opened a room in the last
    /// minute (older windows are dropped at most once a minute).
    pub fn allow(&self, peer: IpAddr) -> bool {
        if self.per_minute == usize::MAX {
            return true;
        }
        let key = client_key(peer);
        let now = Instant::now();
        let mut state = lock(&self.state);
        if state
            .swept
            .is_none_or(|at| now.duration_since(at) >= WINDOW)
        {
            state.swept = Some(now);
            state
                .clients
                .retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        let (start, count) = state.clients.entry(key).or_insert((now, 0));
        if now.duration_since(*start) >= WINDOW {
            *start = now;
            *count = 0;
        }
        if *count >= self.per_minute {
            return false;
        }
        *count += 1;
        true
    }
}

/// What one client is counted by: its IPv4 address, or its IPv6 /64 (one host usually has
/// a whole /64 to pick addresses from). An IPv4-mapped IPv6 address counts as IPv4.
fn client_key(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_are_short_plain_and_not_hidden() {
        for good in ["a", "notes", "team-1_doc.v2", "A.b", &"x".repeat(128)] {
            assert!(check_room_name(good, 128).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".hidden",
            "..",
            "a b",
            "a/b",
            "a%2Fb",
            "é",
            "a:b",
            "a\0b",
            &"x".repeat(129),
        ] {
            assert!(check_room_name(bad, 128).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn each_address_gets_its_own_budget_and_ipv6_counts_by_its_64() {
        let rate = OpenRate::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(rate.allow(a) && rate.allow(a));
        assert!(!rate.allow(a));
        assert!(rate.allow(b));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8::ffff:1234".parse().unwrap();
        let other_64: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert!(rate.allow(v6) && rate.allow(same_64));
        assert!(!rate.allow(v6));
        assert!(rate.allow(other_64));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert!(
            !rate.allow(mapped),
            "an IPv4-mapped address is that IPv4 address"
        );
        assert!(OpenRate::new(usize::MAX).allow(a));
    }

    #[test]
    fn a_window_ends_after_a_minute() {
        let rate = OpenRate::new(1);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(rate.allow(a));
        assert!(!rate.allow(a));
        // Age the window instead of waiting for it.
        for (start, _) in lock(&rate.state).clients.values_mut() {
            *start -= WINDOW;
        }
        assert!(rate.allow(a));
    }
}
