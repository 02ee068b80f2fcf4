//! Reused buffers for building keys: once a thread has served a few
//! requests, building a key allocates nothing.

use std::{
    cell::RefCell,
    ops::{Deref, DerefMut},
};

/// Buffers kept per thread; more are simply freed.
const POOL: usize = 64;

/// A key longer than this is not worth keeping (a hashed value keeps keys
/// far shorter).
const MAX_KEPT: usize = 1024;

thread_local! {
    static FREE: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// A `String` taken from this thread's pool and given back when dropped,
/// to whichever thread drops it.
#[derive(Debug, Default)]
pub(crate) struct KeyBuffer(String);

impl KeyBuffer {
    pub(crate) fn take() -> Self {
        let reused = FREE.try_with(|free| free.borrow_mut().pop()).ok().flatten();
        Self(reused.unwrap_or_else(|| String::with_capacity(128)))
    }
}

impl Drop for KeyBuffer {
    fn drop(&mut self) {
        let mut buffer = std::mem::take(&mut self.0);
        if buffer.capacity() == 0 || buffer.capacity() > MAX_KEPT {
            return;
        }
        buffer.clear();
        let _ = FREE.try_with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < POOL {
                free.push(buffer);
            }
        });
    }
}

impl Deref for KeyBuffer {
    type Target = String;

    fn deref(&self) -> &String {
        &self.0
    }
}

impl DerefMut for KeyBuffer {
    fn deref_mut(&mut self) -> &mut String {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_empty() {
        let mut first = KeyBuffer::take();
        first.push_str("rl:p:{k}");
        let address = first.as_ptr();
        drop(first);
        let second = KeyBuffer::take();
        assert!(second.is_empty());
        assert_eq!(second.as_ptr(), address);
    }
}
