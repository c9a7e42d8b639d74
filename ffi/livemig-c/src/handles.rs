//! Handle tables: what a handle given to C names.
//!
//! A handle is a token from one process-wide counter, never an address and
//! never reused. Looking it up in its table is the only way to reach the
//! object, so a freed, forged or wrong-kind handle is found missing instead
//! of being dereferenced.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Tokens look like aligned pointers (some C tools check that) and start
/// well above the null page.
static NEXT_TOKEN: AtomicUsize = AtomicUsize::new(0x10_0000);

/// Live objects of one kind, by token.
pub struct HandleTable<T> {
    live: Mutex<BTreeMap<usize, Arc<T>>>,
}

impl<T> HandleTable<T> {
    pub const fn new() -> Self {
        HandleTable {
            live: Mutex::new(BTreeMap::new()),
        }
    }

    /// Registers `value` under a new token.
    pub fn insert(&self, value: Arc<T>) -> usize {
        let token = NEXT_TOKEN.fetch_add(16, Ordering::Relaxed);
        self.live.lock().unwrap_or_else(|p| p.into_inner()).insert(token, value);
        token
    }

    /// The object behind `token`, if it is live.
    pub fn get(&self, token: usize) -> Option<Arc<T>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).get(&token).cloned()
    }

    /// Unregisters `token`; `None` if it was not live.
    pub fn remove(&self, token: usize) -> Option<Arc<T>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).remove(&token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_and_foreign_tokens_are_not_found() {
        let a: HandleTable<u32> = HandleTable::new();
        let b: HandleTable<u32> = HandleTable::new();
        let t = a.insert(Arc::new(7));
        assert_eq!(a.get(t).as_deref(), Some(&7));
        assert!(b.get(t).is_none(), "a token of one table is not valid in another");
        assert!(a.remove(t).is_some());
        assert!(a.remove(t).is_none(), "a second free is detected");
        assert!(a.get(t).is_none(), "use after free is detected");
        let t2 = a.insert(Arc::new(8));
        assert_ne!(t, t2, "tokens are never reused");
        assert!(a.get(0).is_none());
    }
}
