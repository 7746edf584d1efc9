//! Types that hold plaintext secrets.
//!
//! Both types zero their heap buffer on drop and print `[redacted]` through `Debug` and
//! `Display`, so a secret that ends up in a log line or a `{:?}` of a bigger struct shows
//! nothing. The only way to the plaintext is the explicitly named `expose*` methods.

use std::fmt;

use zeroize::Zeroizing;

const REDACTED: &str = "[redacted]";

/// A UTF-8 secret (an API key, a token). Zeroed on drop, never printed.
#[derive(Clone)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    /// Takes ownership of `value`; its buffer is zeroed when the secret drops.
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The plaintext. Keep the borrow short and never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The plaintext length in bytes (not secret in itself, useful for checks).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the plaintext is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A binary secret (a keytab, a key file). Zeroed on drop, never printed.
#[derive(Clone)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of `value`; its buffer is zeroed when the secret drops.
    pub fn new(value: Vec<u8>) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The plaintext. Keep the borrow short and never log it.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The plaintext length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the plaintext is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(value: Vec<u8>) -> Self {
        Self::new(value)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_string_never_prints_plaintext() {
        let s = SecretString::new("sk-live-123".to_string());
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s:#?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&s)), "Some([redacted])");
        assert_eq!(s.expose(), "sk-live-123");
        assert_eq!(s.len(), 11);
    }

    #[test]
    fn secret_bytes_never_prints_plaintext() {
        let b = SecretBytes::new(b"\x00key-bytes".to_vec());
        assert_eq!(format!("{b}"), "[redacted]");
        assert_eq!(format!("{b:?}"), "[redacted]");
        assert_eq!(b.expose(), b"\x00key-bytes");
    }
}
