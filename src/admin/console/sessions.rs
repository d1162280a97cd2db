//! Console sessions, as plain clock-injected logic: a login with the admin token opens a
//! session (a random id in an `HttpOnly`, `SameSite=Strict` cookie, with its own CSRF token
//! for every form), and sessions expire. Wrong tokens are counted by `admin::guard`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a session lives without use.
pub(crate) const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// Most sessions at once (the oldest goes).
const MAX_SESSIONS: usize = 64;

/// One logged-in browser.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// Every form posts it back.
    pub(crate) csrf: String,
    /// Last use.
    pub(crate) seen: Instant,
}

/// The open sessions.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    open: HashMap<String, Session>,
}

fn random_id() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Sessions {
    /// Opens a session (the admin token was given); its id.
    pub fn open(&mut self, now: Instant) -> String {
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
        id
    }

    /// The session of a cookie value, if it is open (its use renews it).
    pub(crate) fn get(&mut self, id: &str, now: Instant) -> Option<Session> {
        let s = self.open.get_mut(id)?;
        if now.duration_since(s.seen) >= SESSION_IDLE {
            self.open.remove(id);
            return None;
        }
        s.seen = now;
        Some(s.clone())
    }

    /// Ends a session.
    pub(crate) fn logout(&mut self, id: &str) {
        self.open.remove(id);
    }
}

/// Whether a form's CSRF token is the session's (constant time).
pub(crate) fn csrf_ok(session: &Session, given: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    given.is_some_and(|g| g.as_bytes().ct_eq(session.csrf.as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_opens_with_the_token_expires_and_ends() {
        let mut s = Sessions::default();
        let t0 = Instant::now();
        let id = s.open(t0);
        let session = s.get(&id, t0).expect("open");
        assert!(csrf_ok(&session, Some(&session.csrf)));
        assert!(!csrf_ok(&session, Some("forged")));
        assert!(!csrf_ok(&session, None));
        assert!(s.get("another", t0).is_none());
        assert!(s.get(&id, t0 + SESSION_IDLE).is_none(), "expired");
        let id = s.open(t0);
        s.logout(&id);
        assert!(s.get(&id, t0).is_none());
    }
}
