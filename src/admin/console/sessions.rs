//! Console sessions, as plain clock-injected logic: a login with the admin token opens a
//! session (a random id in an `HttpOnly`, `SameSite=Strict` cookie, with its own CSRF token
//! for every form), sessions expire, and wrong tokens are rate limited per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long a session lives without use.
pub const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// Wrong tokens a client address may send per [`LOGIN_WINDOW`].
pub const LOGIN_ATTEMPTS: u32 = 5;
/// The window of [`LOGIN_ATTEMPTS`].
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);
/// Most sessions at once (the oldest goes).
const MAX_SESSIONS: usize = 64;

/// One logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// Every form posts it back.
    pub csrf: String,
    /// Last use.
    pub seen: Instant,
}

/// The open sessions and the login limiter.
#[derive(Debug, Default)]
pub struct Sessions {
    open: HashMap<String, Session>,
    failures: HashMap<IpAddr, (Instant, u32)>,
}

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The token is wrong.
    WrongToken,
    /// Too many wrong tokens from this address: wait until then.
    TooMany(Instant),
}

fn random_id() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Sessions {
    /// A login from `from`; `good` says whether the token was right. The session id.
    pub fn login(&mut self, from: IpAddr, good: bool, now: Instant) -> Result<String, Refused> {
        // Addresses whose window is over are forgotten: the map stays as small as the
        // number of addresses that failed in the last minute.
        self.failures
            .retain(|_, (since, _)| now.duration_since(*since) < LOGIN_WINDOW);
        let entry = self.failures.entry(from).or_insert((now, 0));
        if entry.1 >= LOGIN_ATTEMPTS {
            return Err(Refused::TooMany(entry.0 + LOGIN_WINDOW));
        }
        if !good {
            entry.1 += 1;
            return Err(Refused::WrongToken);
        }
        self.failures.remove(&from);
        self.open
            .retain(|_, s| now.duration_since(s.seen) < SESSION_IDLE);
        if self.open.len() >= MAX_SESSIONS {
            if let Some(oldest) = self
                .open
                .iter()
                .min_by_key(|(_, s)| s.seen)
                .map(|(k, _)| k.clone())
            {
                self.open.remove(&oldest);
            }
        }
        let id = random_id();
        self.open.insert(
            id.clone(),
            Session {
                csrf: random_id(),
                seen: now,
            },
        );
        Ok(id)
    }

    /// The session of a cookie value, if it is open (its use renews it).
    pub fn get(&mut self, id: &str, now: Instant) -> Option<Session> {
        let s = self.open.get_mut(id)?;
        if now.duration_since(s.seen) >= SESSION_IDLE {
            self.open.remove(id);
            return None;
        }
        s.seen = now;
        Some(s.clone())
    }

    /// Ends a session.
    pub fn logout(&mut self, id: &str) {
        self.open.remove(id);
    }
}

/// Whether a form's CSRF token is the session's (constant time).
pub fn csrf_ok(session: &Session, given: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    given.is_some_and(|g| g.as_bytes().ct_eq(session.csrf.as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_opens_with_the_token_expires_and_ends() {
        let mut s = Sessions::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        let id = s.login(ip, true, t0).unwrap();
        let session = s.get(&id, t0).expect("open");
        assert!(csrf_ok(&session, Some(&session.csrf)));
        assert!(!csrf_ok(&session, Some("forged")));
        assert!(!csrf_ok(&session, None));
        assert!(s.get("another", t0).is_none());
        assert!(s.get(&id, t0 + SESSION_IDLE).is_none(), "expired");
        let id = s.login(ip, true, t0).unwrap();
        s.logout(&id);
        assert!(s.get(&id, t0).is_none());
    }

    #[test]
    fn wrong_tokens_are_rate_limited_per_address() {
        let mut s = Sessions::default();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let other: IpAddr = "10.0.0.10".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..LOGIN_ATTEMPTS {
            assert_eq!(s.login(ip, false, t0), Err(Refused::WrongToken));
        }
        // Even the right token waits now; another address does not.
        assert_eq!(
            s.login(ip, true, t0),
            Err(Refused::TooMany(t0 + LOGIN_WINDOW))
        );
        assert!(s.login(other, true, t0).is_ok());
        assert!(s.login(ip, true, t0 + LOGIN_WINDOW).is_ok());
    }
}
