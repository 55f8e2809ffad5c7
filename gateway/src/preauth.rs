//! The cap on connections that are not yet authorised.
//!
//! Every accepted connection costs a task, a socket and (with TLS) a
//! handshake before the gateway knows whether it carries a valid token. A
//! flood of anonymous connections must not be able to exhaust file
//! descriptors or memory, nor crowd out other clients: each connection takes
//! a [`PreAuthPermit`] at accept, counted in total and per client address,
//! and gives it back once a session is granted or the connection ends. A
//! refusal's websocket close keeps the permit until that socket is closed.
//!
//! At the cap the connection is closed at once, before any TLS or HTTP: a
//! "503" would need a full TLS handshake first, which is the very work a
//! flood is trying to make the gateway do.
//!
//! IPv6 clients are counted per /64, the block one host usually gets: one
//! host can pick any address in it for free.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use prometheus::{IntCounterVec, IntGauge};

/// Which cap a connection hit (the `reason` label of the rejection counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapReached {
    /// All addresses together hold `--max-preauth-connections`.
    Total,
    /// This client address holds `--max-preauth-connections-per-address`.
    PerAddress,
}

impl CapReached {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CapReached::Total => "total",
            CapReached::PerAddress => "per_address",
        }
    }
}

/// The caps (0 per address = no per-address cap, for a gateway behind a
/// proxy where every connection comes from the proxy's address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreAuthLimits {
    /// Connections not yet authorised, all addresses together.
    pub total: usize,
    /// Connections not yet authorised from one address (0: unlimited).
    pub per_address: usize,
}

struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// Counts connections not yet authorised; shared by the accept loop.
pub struct PreAuth {
    limits: PreAuthLimits,
    counts: Mutex<Counts>,
    gauge: IntGauge,
    rejected: IntCounterVec,
}

/// The address a client is counted under: IPv4 as is (also when mapped into
/// IPv6), IPv6 by its /64.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

impl PreAuth {
    /// A counter with these caps, reporting to `gauge` and `rejected`.
    pub fn new(limits: PreAuthLimits, gauge: IntGauge, rejected: IntCounterVec) -> Arc<PreAuth> {
        Arc::new(PreAuth {
            limits,
            counts: Mutex::new(Counts {
                total: 0,
                by_address: HashMap::new(),
            }),
            gauge,
            rejected,
        })
    }

    /// A permit for a new connection from `ip`, or which cap is reached
    /// (counted in the rejection metric).
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<PreAuthPermit, CapReached> {
        let key = bucket(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let from_here = counts.by_address.get(&key).copied().unwrap_or(0);
        let refused = if counts.total >= self.limits.total {
            Some(CapReached::Total)
        } else if self.limits.per_address > 0 && from_here >= self.limits.per_address {
            Some(CapReached::PerAddress)
        } else {
            None
        };
        if let Some(reason) = refused {
            drop(counts);
            self.rejected.with_label_values(&[reason.as_str()]).inc();
            return Err(reason);
        }
        counts.total += 1;
        *counts.by_address.entry(key).or_insert(0) += 1;
        self.gauge.inc();
        Ok(PreAuthPermit {
            preauth: self.clone(),
            key,
        })
    }

    /// Connections holding a permit now.
    pub fn current(&self) -> usize {
        self.counts.lock().map(|c| c.total).unwrap_or(0)
    }

    fn release(&self, key: IpAddr) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_address.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                // Addresses seen once do not accumulate.
                counts.by_address.remove(&key);
            }
        }
        self.gauge.dec();
    }
}

/// One connection's place under the caps; given back on drop.
pub struct PreAuthPermit {
    preauth: Arc<PreAuth>,
    key: IpAddr,
}

impl Drop for PreAuthPermit {
    fn drop(&mut self) {
        self.preauth.release(self.key);
    }
}

/// A connection's permit, shared between the connection task and its
/// requests (as a request extension), so that a granted session gives it
/// back early and a refusal's close handshake keeps it until it is done.
#[derive(Clone, Default)]
pub struct PreAuthSlot(Arc<Mutex<Option<PreAuthPermit>>>);

impl PreAuthSlot {
    /// A slot holding `permit`.
    pub fn new(permit: PreAuthPermit) -> PreAuthSlot {
        PreAuthSlot(Arc::new(Mutex::new(Some(permit))))
    }

    /// Gives the permit back now: the connection is authorised.
    pub fn release(&self) {
        let permit = self.0.lock().map(|mut p| p.take()).ok().flatten();
        drop(permit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    fn preauth(total: usize, per_address: usize) -> Arc<PreAuth> {
        PreAuth::new(
            PreAuthLimits { total, per_address },
            IntGauge::new("g", "g").unwrap(),
            IntCounterVec::new(Opts::new("c", "c"), &["reason"]).unwrap(),
        )
    }

    #[test]
    fn caps_per_address_and_in_total_and_frees_on_drop() {
        let p = preauth(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = p.try_acquire(a).unwrap();
        let _a2 = p.try_acquire(a).unwrap();
        assert_eq!(p.try_acquire(a).err(), Some(CapReached::PerAddress));
        let _b1 = p.try_acquire(b).unwrap();
        assert_eq!(p.try_acquire(b).err(), Some(CapReached::Total));
        assert_eq!(p.gauge.get(), 3);
        drop(a1);
        assert_eq!(p.current(), 2);
        let _a3 = p.try_acquire(a).unwrap();
        assert_eq!(p.rejected.with_label_values(&["per_address"]).get(), 1);
        assert_eq!(p.rejected.with_label_values(&["total"]).get(), 1);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let p = preauth(100, 1);
        let _x = p.try_acquire("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(
            p.try_acquire("2001:db8:1:2:ffff::9".parse().unwrap())
                .is_err()
        );
        assert!(p.try_acquire("2001:db8:1:3::1".parse().unwrap()).is_ok());
        let _v4 = p.try_acquire("192.0.2.7".parse().unwrap()).unwrap();
        assert!(p.try_acquire("::ffff:192.0.2.7".parse().unwrap()).is_err());
    }

    #[test]
    fn a_released_slot_frees_its_permit_once() {
        let p = preauth(1, 0);
        let slot = PreAuthSlot::new(p.try_acquire("192.0.2.1".parse().unwrap()).unwrap());
        let copy = slot.clone();
        assert!(p.try_acquire("192.0.2.2".parse().unwrap()).is_err());
        slot.release();
        copy.release();
        drop(copy);
        assert_eq!(p.current(), 0);
        assert_eq!(p.gauge.get(), 0);
    }
}
