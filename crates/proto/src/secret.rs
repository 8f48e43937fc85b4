use core::fmt;

use zeroize::Zeroize;

/// A value that must never reach a log: its `Debug` prints `<redacted>`, and dropping it
/// overwrites it (`zeroize`), so a password does not linger in freed memory.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T: Zeroize>(T);

impl<T: Zeroize> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The secret itself, for the one place that must use it.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Takes the value out (the caller now owns its wiping); what is left behind is the empty
    /// default, wiped on drop like any other.
    pub fn into_inner(mut self) -> T
    where
        T: Default,
    {
        core::mem::take(&mut self.0)
    }
}

impl<T: Zeroize> Drop for Secret<T> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<T: Zeroize> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;
    use std::cell::RefCell;
    use std::rc::Rc;
    use zeroize::Zeroize;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2".to_string());
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(s.expose(), "hunter2");
    }

    /// Freed memory cannot be read without `unsafe` (forbidden in this workspace), so the
    /// test watches what drop does instead: a value whose `zeroize` overwrites its bytes in
    /// place (as `Vec<u8>`'s does, over its whole capacity) and shows them to the test.
    struct Watched {
        bytes: Vec<u8>,
        seen: Rc<RefCell<Option<Vec<u8>>>>,
    }

    impl Zeroize for Watched {
        fn zeroize(&mut self) {
            self.bytes.as_mut_slice().zeroize();
            *self.seen.borrow_mut() = Some(self.bytes.clone());
        }
    }

    #[test]
    fn drop_zeroizes_the_value() {
        let seen = Rc::new(RefCell::new(None));
        let secret = Secret::new(Watched {
            bytes: b"hunter2".to_vec(),
            seen: seen.clone(),
        });
        assert!(seen.borrow().is_none());
        drop(secret);
        assert_eq!(seen.borrow().as_deref(), Some(&[0u8; 7][..]));
    }

    #[test]
    fn into_inner_hands_the_value_over() {
        let s = Secret::new(b"pw".to_vec());
        assert_eq!(s.into_inner(), b"pw");
    }
}
