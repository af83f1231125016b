//! Locking that survives a panic elsewhere.
//!
//! The runner catches a processor's panic and fails only that pipeline, and spawned provider
//! tasks may panic too. A `std::sync::Mutex` held at that
//! moment is *poisoned*, and `lock().unwrap()` would turn one failed call into a panic in every
//! other task that touches the same state (a shared conversation context, a recorder, a counter).
//! The state behind these locks is plain data updated in single statements, so the last write
//! is as good as any: take the guard and carry on.
//!
//! Why a helper and not `parking_lot`: one function keeps every lock in the workspace a `std`
//! mutex (no second lock type in public signatures, no extra dependency), and the cost is the
//! same uncontended atomic operation.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Lock `mutex`, ignoring poisoning (see the module docs for why that is sound here).
#[inline]
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_yields_its_data() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = lock(&m2);
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
