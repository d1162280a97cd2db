//! Who may hold the admin listener's connections: at most [`MAX_CONNECTIONS`] in all and
//! [`PER_ADDRESS`] from one client address, so that one client holding idle connections
//! cannot lock out another (a health check, the console, the CLI). A connection over
//! either limit is closed at once rather than queued behind the others.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Connections the listener serves at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Connections one client address may hold at once (a browser opens about six).
pub const PER_ADDRESS: usize = 8;

/// The connections held, per client address.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    per_address: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

/// Why a connection got no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every place is taken.
    Full,
    /// Its address holds its share already.
    Address,
}

impl Slots {
    /// At most `max` connections, `per_address` from one address.
    pub fn new(max: usize, per_address: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max,
            per_address,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A place for a connection from `ip`, when both limits allow one.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = held.values().sum();
        let mine = held.get(&ip).copied().unwrap_or(0);
        if mine >= self.per_address {
            return Err(Refused::Address);
        }
        if total >= self.max {
            return Err(Refused::Full);
        }
        held.insert(ip, mine + 1);
        Ok(Slot {
            slots: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_holds_its_share_and_others_still_get_in() {
        let slots = Slots::new(4, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let c: IpAddr = "127.0.0.3".parse().unwrap();
        let a1 = slots.take(a).unwrap();
        let _a2 = slots.take(a).unwrap();
        assert_eq!(slots.take(a).unwrap_err(), Refused::Address);
        let _b1 = slots.take(b).unwrap();
        let _b2 = slots.take(b).unwrap();
        assert_eq!(slots.take(c).unwrap_err(), Refused::Full);
        drop(a1);
        let _c1 = slots.take(c).unwrap();
        assert_eq!(slots.take(a).unwrap_err(), Refused::Full);
        assert_eq!(slots.held.lock().unwrap().len(), 3);
    }
}
