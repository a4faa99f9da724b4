//! The secret key: generation, its file format, and HMAC derivation of every seed.
//!
//! Every pseudo-random choice of the watermark (tile layout, chip signs,
//! per-copy verification chips) is a ChaCha20 stream seeded by
//! HMAC-SHA256(secret, label ‖ parts). Without the secret nobody can predict
//! any of them. The key file is text, versioned, and created with mode 0600.
//! Knows nothing of images.

use std::fmt;
use std::io::Write;
use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use rand::TryRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::{Error, Result};

/// First line of every key file; the number is the key format version.
const KEY_HEADER: &str = "leakmark-key v1";

/// Domain separator of every derivation, so seeds of other formats never collide.
const DERIVATION_DOMAIN: &[u8] = b"leakmark/derive/v1";

/// A 256-bit secret. Zeroized when dropped; never printed.
#[derive(Clone)]
pub struct SecretKey {
    bytes: [u8; 32],
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(fingerprint {})", self.fingerprint())
    }
}

impl SecretKey {
    /// A fresh key from the operating system's random source.
    ///
    /// # Panics
    ///
    /// If the operating system cannot supply randomness (no key is better than a weak one).
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::SysRng
            .try_fill_bytes(&mut bytes)
            .expect("the operating system random source failed");
        SecretKey { bytes }
    }

    /// A key from raw bytes (tests, derived keys).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SecretKey { bytes }
    }

    /// Public identifier of the key: the first 16 hex digits of
    /// SHA-256("leakmark-fingerprint-v1" ‖ secret). Safe to store and print.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"leakmark-fingerprint-v1");
        h.update(self.bytes);
        let digest = h.finalize();
        hex(&digest[..8])
    }

    /// A 32-byte seed for one purpose: HMAC-SHA256 over the domain, the label
    /// and each part (length-prefixed, so part boundaries cannot be shifted).
    pub fn derive_seed(&self, label: &str, parts: &[&[u8]]) -> [u8; 32] {
        // Invariant: HMAC accepts keys of any length.
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.bytes).expect("HMAC takes any key length");
        mac.update(DERIVATION_DOMAIN);
        for piece in std::iter::once(label.as_bytes()).chain(parts.iter().copied()) {
            mac.update(&(piece.len() as u64).to_le_bytes());
            mac.update(piece);
        }
        mac.finalize().into_bytes().into()
    }

    /// Writes the key to a new file with mode 0600. Refuses to overwrite an existing file.
    ///
    /// # Errors
    ///
    /// [`Error::KeyExists`] if the file exists, [`Error::Write`] on I/O failure.
    pub fn save_new(&self, path: &Path) -> Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                Error::KeyExists {
                    path: path.to_path_buf(),
                }
            } else {
                Error::Write {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        let mut text = format!(
            "{KEY_HEADER}\n# keep this file secret: whoever holds it can read and forge marks\nfingerprint: {}\nsecret: {}\n",
            self.fingerprint(),
            hex(&self.bytes)
        );
        let written = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_all());
        text.zeroize();
        written.map_err(|source| Error::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads a key file written by [`SecretKey::save_new`].
    ///
    /// # Errors
    ///
    /// [`Error::KeyRead`] if missing or unreadable, [`Error::KeyPermissions`]
    /// if group or others may read it, [`Error::KeyFormat`] if malformed.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::KeyRead {
            path: path.to_path_buf(),
            source,
        })?;
        // Not UTF-8 is a malformed key, not an unreadable file: the fix is
        // another file, not `keygen` over this one.
        let mut text = String::from_utf8(bytes).map_err(|e| {
            e.into_bytes().zeroize();
            Error::KeyFormat {
                path: path.to_path_buf(),
                reason: "it is not a text file".into(),
            }
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path).map_err(|source| Error::KeyRead {
                path: path.to_path_buf(),
                source,
            })?;
            if meta.permissions().mode() & 0o077 != 0 {
                text.zeroize();
                return Err(Error::KeyPermissions {
                    path: path.to_path_buf(),
                });
            }
        }
        let parsed = Self::parse(&text, path);
        text.zeroize();
        parsed
    }

    /// Parses the text of a key file; `source` only names it in errors.
    ///
    /// [`SecretKey::load`] without the file system and its permission check:
    /// for keys held elsewhere, and for fuzzing the parser.
    ///
    /// # Errors
    ///
    /// [`Error::KeyFormat`] if the text is not a key file of this version.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::path::Path;
    /// use leakmark::{Error, SecretKey};
    ///
    /// let text = format!("leakmark-key v1\nsecret: {}\n", "ab".repeat(32));
    /// assert!(SecretKey::parse(&text, Path::new("k.key")).is_ok());
    /// let bad = SecretKey::parse("leakmark-key v1\nsecret: 12\n", Path::new("k.key"));
    /// assert!(matches!(bad, Err(Error::KeyFormat { .. })));
    /// ```
    pub fn parse(text: &str, source: &Path) -> Result<Self> {
        parse_key_text(text).map_err(|reason| Error::KeyFormat {
            path: source.to_path_buf(),
            reason,
        })
    }
}

fn parse_key_text(text: &str) -> std::result::Result<SecretKey, String> {
    let mut lines = text.lines();
    match lines.next().map(str::trim) {
        Some(KEY_HEADER) => {}
        Some(other) if other.starts_with("leakmark-key ") => {
            return Err(format!(
                "unsupported version line '{other}', this build reads '{KEY_HEADER}'"
            ))
        }
        _ => return Err(format!("first line must be '{KEY_HEADER}'")),
    }
    let mut secret = None;
    let mut fingerprint = None;
    for line in lines
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if let Some(v) = line.strip_prefix("secret:") {
            secret = Some(unhex32(v.trim()).ok_or("secret must be 64 hex digits")?);
        } else if let Some(v) = line.strip_prefix("fingerprint:") {
            fingerprint = Some(v.trim().to_string());
        } else {
            return Err("unexpected line (expected 'secret:' or 'fingerprint:')".into());
        }
    }
    let key = SecretKey::from_bytes(secret.ok_or("no 'secret:' line")?);
    if let Some(fp) = fingerprint {
        if fp != key.fingerprint() {
            return Err(
                "fingerprint line does not match the secret (file edited or damaged)".into(),
            );
        }
    }
    Ok(key)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_roundtrips_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let key = SecretKey::generate();
        key.save_new(&path).unwrap();
        let back = SecretKey::load(&path).unwrap();
        assert_eq!(back.fingerprint(), key.fingerprint());
        assert_eq!(
            back.derive_seed("x", &[b"1"]),
            key.derive_seed("x", &[b"1"])
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn save_refuses_to_overwrite_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        SecretKey::generate().save_new(&path).unwrap();
        assert!(matches!(
            SecretKey::generate().save_new(&path),
            Err(Error::KeyExists { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        SecretKey::generate().save_new(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            SecretKey::load(&path),
            Err(Error::KeyPermissions { .. })
        ));
    }

    #[test]
    fn malformed_key_files_are_refused() {
        for text in [
            "",
            "hello",
            "leakmark-key v1\nsecret: 12",
            "leakmark-key v9\nsecret: 00",
        ] {
            assert!(parse_key_text(text).is_err(), "{text:?}");
        }
        let good = format!("{KEY_HEADER}\nsecret: {}\n", "ab".repeat(32));
        assert!(parse_key_text(&good).is_ok());
        let bad_fp = format!(
            "{KEY_HEADER}\nfingerprint: 0000\nsecret: {}\n",
            "ab".repeat(32)
        );
        assert!(parse_key_text(&bad_fp).is_err());
    }

    #[test]
    fn derivation_is_pinned() {
        // Test vector: a change here silently orphans every mark ever issued.
        let key = SecretKey::from_bytes([7u8; 32]);
        let seed = key.derive_seed("sync", &[&[3u8]]);
        assert_eq!(hex(&seed[..8]), PINNED_SEED_PREFIX);
        assert_ne!(seed, key.derive_seed("sync", &[&[4u8]]));
        assert_ne!(
            key.derive_seed("ab", &[b"c"]),
            key.derive_seed("a", &[b"bc"])
        );
    }

    /// HMAC-SHA256 of the fixed derivation input under key [7; 32].
    const PINNED_SEED_PREFIX: &str = "6aba857c9801a625";

    #[test]
    fn debug_never_shows_the_secret() {
        let key = SecretKey::from_bytes([0xab; 32]);
        assert!(!format!("{key:?}").contains("abab"));
    }
}
