//! Who may hold the admin listener's connections: at most [`MAX_CONNECTIONS`] in all and
//! [`PER_ADDRESS`] from one client address. A connection that finds no place takes the
//! place of the longest-held idle one (connected, and not in the middle of a request):
//! of its own address when that address holds its share, of the address holding the most
//! when every place is taken. So idle connections, however many and from wherever, never
//! keep a request (a health check, the console, the CLI) waiting; only when every place is
//! busy answering is a new connection closed at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Connections the listener serves at once.
pub(crate) const MAX_CONNECTIONS: usize = 32;
/// Connections one client address may hold at once (a browser opens about six).
pub(crate) const PER_ADDRESS: usize = 8;

/// The connections held, per client address, oldest first.
#[derive(Debug)]
pub(crate) struct Slots {
    max: usize,
    per_address: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    next_id: u64,
    by_address: HashMap<IpAddr, Vec<(u64, Arc<Conn>)>>,
}

impl Held {
    fn total(&self) -> usize {
        self.by_address.values().map(Vec::len).sum()
    }

    /// Closes the oldest idle connection of `ip`; whether there was one.
    fn evict_idle(&mut self, ip: IpAddr) -> bool {
        let Some(conns) = self.by_address.get_mut(&ip) else {
            return false;
        };
        let Some(i) = conns.iter().position(|(_, c)| c.is_idle()) else {
            return false;
        };
        let (_, c) = conns.remove(i);
        c.closed.cancel();
        if conns.is_empty() {
            self.by_address.remove(&ip);
        }
        true
    }
}

/// One connection's state, shared with its task.
#[derive(Debug, Default)]
pub(crate) struct Conn {
    /// Requests being answered.
    busy: AtomicUsize,
    /// Cancelled when its place is given to another connection.
    pub(crate) closed: CancellationToken,
}

impl Conn {
    fn is_idle(&self) -> bool {
        self.busy.load(Ordering::SeqCst) == 0
    }

    /// Marks a request as being answered until the guard is dropped.
    pub(crate) fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }
}

/// A request being answered (see [`Conn::busy`]).
pub(crate) struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One connection's place; given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
    id: u64,
    /// The connection's state.
    pub(crate) conn: Arc<Conn>,
}

/// Why a connection got no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Every place is taken by a connection answering a request.
    Full,
    /// Its address holds its share, every one answering a request.
    Address,
}

impl Slots {
    /// At most `max` connections, `per_address` from one address.
    pub(crate) fn new(max: usize, per_address: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max,
            per_address,
            held: Mutex::new(Held::default()),
        })
    }

    /// A place for a connection from `ip`, when both limits allow one, perhaps in place of
    /// an idle connection.
    pub(crate) fn take(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let mine = held.by_address.get(&ip).map_or(0, Vec::len);
        if mine >= self.per_address && !held.evict_idle(ip) {
            return Err(Refused::Address);
        }
        if held.total() >= self.max {
            // The address holding the most gives up an idle place.
            let mut addresses: Vec<(usize, IpAddr)> =
                held.by_address.iter().map(|(a, c)| (c.len(), *a)).collect();
            addresses.sort_by(|a, b| b.cmp(a));
            if !addresses.into_iter().any(|(_, a)| held.evict_idle(a)) {
                return Err(Refused::Full);
            }
        }
        held.next_id += 1;
        let id = held.next_id;
        let conn = Arc::new(Conn::default());
        held.by_address
            .entry(ip)
            .or_default()
            .push((id, conn.clone()));
        Ok(Slot {
            slots: self.clone(),
            ip,
            id,
            conn,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(conns) = held.by_address.get_mut(&self.ip) {
            conns.retain(|(id, _)| *id != self.id);
            if conns.is_empty() {
                held.by_address.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_idle_connection_gives_its_place_to_a_new_one_of_its_address() {
        let slots = Slots::new(4, 2);
        let a1 = slots.take(ip("127.0.0.1")).unwrap();
        let a2 = slots.take(ip("127.0.0.1")).unwrap();
        let _busy = a2.conn.busy();
        let a3 = slots.take(ip("127.0.0.1")).unwrap();
        assert!(a1.conn.closed.is_cancelled(), "the idle one goes");
        assert!(!a2.conn.closed.is_cancelled(), "the busy one stays");
        // Both left are busy: the next one is refused.
        let _busy3 = a3.conn.busy();
        assert_eq!(slots.take(ip("127.0.0.1")).unwrap_err(), Refused::Address);
        drop(a1);
        assert_eq!(slots.held.lock().unwrap().total(), 2);
    }

    #[test]
    fn when_every_place_is_taken_the_address_holding_the_most_gives_up_an_idle_one() {
        let slots = Slots::new(4, 3);
        let a: Vec<Slot> = (0..3)
            .map(|_| slots.take(ip("127.0.0.1")).unwrap())
            .collect();
        let b = slots.take(ip("127.0.0.2")).unwrap();
        let c = slots.take(ip("127.0.0.3")).unwrap();
        assert!(a[0].conn.closed.is_cancelled());
        assert!(!b.conn.closed.is_cancelled());
        // Every place busy: refused.
        let _g: Vec<Busy> = a[1..]
            .iter()
            .chain([&b, &c])
            .map(|s| s.conn.busy())
            .collect();
        assert_eq!(slots.take(ip("127.0.0.4")).unwrap_err(), Refused::Full);
    }
}
