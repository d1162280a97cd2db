//! Guessing the admin token, as plain clock-injected logic: wrong tokens, at the console's
//! sign-in and as a bearer token on `/v1/`, are counted per client address and in all.
//! An address with [`PER_ADDRESS`] wrong tokens in a [`WINDOW`] is refused (429) until the
//! window ends, before its token is looked at; its own success clears it. Past [`GLOBAL`]
//! wrong tokens in a window from all addresses together (a guess spread over many
//! addresses), every further wrong answer waits [`SLOW_DOWN`]; a right token is answered at
//! once, whatever other addresses did. Behind a reverse proxy the address is the one the
//! proxy names (`[admin] trusted_proxies`), so one client's guesses never lock out another.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Wrong tokens one address may send per [`WINDOW`].
pub(crate) const PER_ADDRESS: u32 = 5;
/// Wrong tokens from all addresses together per [`WINDOW`] before answers slow down.
pub(crate) const GLOBAL: u32 = 50;
/// The window of both limits.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// How long a wrong answer waits past [`GLOBAL`].
pub(crate) const SLOW_DOWN: Duration = Duration::from_secs(2);
/// Addresses tracked at most (past that the oldest window goes).
const MAX_ADDRESSES: usize = 4096;

/// Wrong tokens per address and in all, each as (window start, count).
#[derive(Debug, Default)]
pub(crate) struct Guard {
    by_address: HashMap<IpAddr, (Instant, u32)>,
    global: Option<(Instant, u32)>,
}

impl Guard {
    /// `Err(until)` when `from` has used up its wrong tokens: refuse without looking.
    pub fn check(&mut self, from: IpAddr, now: Instant) -> Result<(), Instant> {
        match self.by_address.get(&from) {
            Some((since, n)) if now.duration_since(*since) < WINDOW && *n >= PER_ADDRESS => {
                Err(*since + WINDOW)
            }
            _ => Ok(()),
        }
    }

    /// Counts a wrong token from `from`; how long its answer should wait.
    pub(crate) fn failed(&mut self, from: IpAddr, now: Instant) -> Duration {
        self.by_address
            .retain(|_, (since, _)| now.duration_since(*since) < WINDOW);
        if self.by_address.len() >= MAX_ADDRESSES && !self.by_address.contains_key(&from) {
            if let Some(oldest) = self
                .by_address
                .iter()
                .min_by_key(|(_, (since, _))| *since)
                .map(|(a, _)| *a)
            {
                self.by_address.remove(&oldest);
            }
        }
        self.by_address.entry(from).or_insert((now, 0)).1 += 1;
        let global = match self.global {
            Some((since, n)) if now.duration_since(since) < WINDOW => (since, n + 1),
            _ => (now, 1),
        };
        self.global = Some(global);
        if global.1 > GLOBAL {
            SLOW_DOWN
        } else {
            Duration::ZERO
        }
    }

    /// A right token from `from`: its count starts again.
    pub(crate) fn succeeded(&mut self, from: IpAddr) {
        self.by_address.remove(&from);
    }
}

/// Who sent a request: the client's address and whether it came over TLS. Only a peer named
/// in `[admin] trusted_proxies` is believed about either (`X-Forwarded-For`, its last
/// address; `X-Forwarded-Proto`); anyone else's headers are ignored.
pub(crate) fn caller(
    headers: &hyper::HeaderMap,
    peer: IpAddr,
    trusted_proxies: &[IpAddr],
) -> (IpAddr, bool) {
    if !trusted_proxies.contains(&peer) {
        return (peer, false);
    }
    let client = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .next_back()
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or(peer);
    let tls = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    (client, tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_is_refused_after_its_own_wrong_tokens_and_others_are_not() {
        let mut g = Guard::default();
        let t0 = Instant::now();
        for _ in 0..PER_ADDRESS {
            assert_eq!(g.check(ip("10.0.0.9"), t0), Ok(()));
            assert_eq!(g.failed(ip("10.0.0.9"), t0), Duration::ZERO);
        }
        assert_eq!(g.check(ip("10.0.0.9"), t0), Err(t0 + WINDOW));
        assert_eq!(g.check(ip("10.0.0.10"), t0), Ok(()));
        assert_eq!(
            g.check(ip("10.0.0.9"), t0 + WINDOW),
            Ok(()),
            "the window ends"
        );
        g.succeeded(ip("10.0.0.9"));
        assert_eq!(g.check(ip("10.0.0.9"), t0), Ok(()));
    }

    #[test]
    fn past_the_global_limit_wrong_answers_slow_down_and_no_one_is_refused() {
        let mut g = Guard::default();
        let t0 = Instant::now();
        for i in 0..GLOBAL {
            let a = IpAddr::from([10, 1, (i / 200) as u8, (i % 200) as u8]);
            assert_eq!(g.failed(a, t0), Duration::ZERO);
        }
        assert_eq!(g.failed(ip("10.2.0.1"), t0), SLOW_DOWN);
        // A fresh address is still let in to try its token.
        assert_eq!(g.check(ip("10.3.0.1"), t0), Ok(()));
        assert_eq!(g.failed(ip("10.2.0.1"), t0 + WINDOW), Duration::ZERO);
    }

    #[test]
    fn only_a_trusted_proxy_names_the_client_and_the_scheme() {
        let mut h = hyper::HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.7, 10.0.0.5".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        let proxy = ip("127.0.0.1");
        assert_eq!(caller(&h, proxy, &[proxy]), (ip("10.0.0.5"), true));
        assert_eq!(
            caller(&h, ip("127.0.0.2"), &[proxy]),
            (ip("127.0.0.2"), false)
        );
        assert_eq!(caller(&h, proxy, &[]), (proxy, false));
    }
}
