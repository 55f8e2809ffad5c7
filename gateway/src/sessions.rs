//! Bookkeeping of live sessions: limits, and who holds which VM console.
//!
//! KubeVirt allows one viewer per VM screen and one per serial console: a new
//! connection silently drops the old one. The registry knows which session
//! holds each console so the old one can be told "taken over" instead of a
//! bare connection loss.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::refusal::Refusal;
use crate::route::ConsoleKind;

/// Session limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Sessions open at once, all users together.
    pub max_sessions: usize,
    /// Sessions open at once per user.
    pub max_sessions_per_user: usize,
}

/// Identifies one VM console.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConsoleKey {
    /// Lab namespace.
    pub namespace: String,
    /// VMI name.
    pub vmi: String,
    /// Screen or serial console.
    pub kind: ConsoleKind,
}

/// One session's hold on a console.
#[derive(Debug)]
pub struct ConsoleHold {
    id: u64,
    /// Another session is connecting to the same console (KubeVirt may drop us any moment).
    takeover_pending: AtomicBool,
    /// Another session got the console.
    taken_over: AtomicBool,
    kicked: Notify,
}

impl ConsoleHold {
    /// Resolves when another session took this console over.
    pub async fn kicked(&self) {
        self.kicked.notified().await;
    }

    /// What to tell the client when the VM side vanished without a close frame.
    pub fn loss_reason(&self) -> Refusal {
        if self.taken_over.load(Ordering::Acquire) || self.takeover_pending.load(Ordering::Acquire)
        {
            Refusal::TakenOver
        } else {
            Refusal::UpstreamError
        }
    }
}

/// Live-session registry shared by all connections.
pub struct Sessions {
    limits: Limits,
    global: Arc<Semaphore>,
    per_user: Mutex<HashMap<String, usize>>,
    consoles: Mutex<HashMap<ConsoleKey, Arc<ConsoleHold>>>,
    next_id: AtomicU64,
}

/// Held for the life of a session; gives back its slots on drop.
pub struct SessionPermit {
    sessions: Arc<Sessions>,
    user: String,
    _global: OwnedSemaphorePermit,
}

impl Drop for SessionPermit {
    fn drop(&mut self) {
        if let Ok(mut per_user) = self.sessions.per_user.lock()
            && let Some(n) = per_user.get_mut(&self.user)
        {
            *n -= 1;
            if *n == 0 {
                per_user.remove(&self.user);
            }
        }
    }
}

/// A claim on a console, taken before connecting upstream.
pub struct ConsoleClaim {
    sessions: Arc<Sessions>,
    key: ConsoleKey,
    /// This session's hold.
    pub hold: Arc<ConsoleHold>,
    previous: Option<Arc<ConsoleHold>>,
}

impl ConsoleClaim {
    /// The upstream is open: the previous holder has been dropped by KubeVirt;
    /// tell it why.
    pub fn confirm(&mut self) {
        if let Some(prev) = self.previous.take() {
            prev.taken_over.store(true, Ordering::Release);
            prev.kicked.notify_one();
        }
    }

    /// The upstream could not be opened: the previous holder keeps the console.
    pub fn abandon(mut self) {
        if let Some(prev) = self.previous.take() {
            prev.takeover_pending.store(false, Ordering::Release);
            if let Ok(mut consoles) = self.sessions.consoles.lock()
                && consoles
                    .get(&self.key)
                    .is_some_and(|h| h.id == self.hold.id)
            {
                consoles.insert(self.key.clone(), prev);
            }
        }
    }
}

impl Drop for ConsoleClaim {
    fn drop(&mut self) {
        if let Ok(mut consoles) = self.sessions.consoles.lock()
            && consoles
                .get(&self.key)
                .is_some_and(|h| h.id == self.hold.id)
        {
            consoles.remove(&self.key);
        }
    }
}

impl Sessions {
    /// An empty registry.
    pub fn new(limits: Limits) -> Arc<Sessions> {
        Arc::new(Sessions {
            limits,
            global: Arc::new(Semaphore::new(limits.max_sessions)),
            per_user: Mutex::new(HashMap::new()),
            consoles: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        })
    }

    /// Takes a session slot for `user`.
    ///
    /// # Errors
    /// [`Refusal::LimitReached`] when the global or per-user limit is reached.
    pub fn admit(self: &Arc<Self>, user: &str) -> Result<SessionPermit, Refusal> {
        let global = self
            .global
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::LimitReached)?;
        let mut per_user = self.per_user.lock().map_err(|_| Refusal::LimitReached)?;
        let n = per_user.entry(user.to_string()).or_insert(0);
        if *n >= self.limits.max_sessions_per_user {
            return Err(Refusal::LimitReached);
        }
        *n += 1;
        Ok(SessionPermit {
            sessions: self.clone(),
            user: user.to_string(),
            _global: global,
        })
    }

    /// Becomes the holder of `key`, marking the previous holder as about to
    /// be taken over.
    pub fn claim(self: &Arc<Self>, key: ConsoleKey) -> ConsoleClaim {
        let hold = Arc::new(ConsoleHold {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            takeover_pending: AtomicBool::new(false),
            taken_over: AtomicBool::new(false),
            kicked: Notify::new(),
        });
        let previous = self
            .consoles
            .lock()
            .ok()
            .and_then(|mut consoles| consoles.insert(key.clone(), hold.clone()));
        if let Some(prev) = &previous {
            prev.takeover_pending.store(true, Ordering::Release);
        }
        ConsoleClaim {
            sessions: self.clone(),
            key,
            hold,
            previous,
        }
    }

    /// Whether a session of this gateway holds `key` now.
    pub fn is_held(&self, key: &ConsoleKey) -> bool {
        self.consoles
            .lock()
            .is_ok_and(|consoles| consoles.contains_key(key))
    }

    /// Sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.limits.max_sessions - self.global.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ConsoleKey {
        ConsoleKey {
            namespace: "lab".into(),
            vmi: "vm".into(),
            kind: ConsoleKind::Vnc,
        }
    }

    #[test]
    fn limits_are_enforced_and_released() {
        let s = Sessions::new(Limits {
            max_sessions: 3,
            max_sessions_per_user: 2,
        });
        let a1 = s.admit("alice").unwrap();
        let _a2 = s.admit("alice").unwrap();
        assert_eq!(s.admit("alice").err(), Some(Refusal::LimitReached));
        let _b1 = s.admit("bob").unwrap();
        assert_eq!(s.admit("carol").err(), Some(Refusal::LimitReached));
        drop(a1);
        assert!(s.admit("alice").is_ok());
    }

    #[tokio::test]
    async fn takeover_tells_the_previous_holder() {
        let s = Sessions::new(Limits {
            max_sessions: 10,
            max_sessions_per_user: 10,
        });
        let mut first = s.claim(key());
        first.confirm();
        assert_eq!(first.hold.loss_reason(), Refusal::UpstreamError);
        let mut second = s.claim(key());
        // Connecting: a drop seen now is already a takeover.
        assert_eq!(first.hold.loss_reason(), Refusal::TakenOver);
        second.confirm();
        tokio::time::timeout(std::time::Duration::from_secs(1), first.hold.kicked())
            .await
            .unwrap();

        // A failed takeover leaves the holder in place.
        let third = s.claim(key());
        assert_eq!(second.hold.loss_reason(), Refusal::TakenOver);
        third.abandon();
        assert_eq!(second.hold.loss_reason(), Refusal::UpstreamError);
    }
}
