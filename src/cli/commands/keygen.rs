//! `leakmark keygen --out KEYFILE`: a fresh secret key, mode 0600, never
//! over an existing file.

use std::path::Path;

use leakmark::SecretKey;

use crate::cli::Status;

/// Writes a new key to `out` and prints its fingerprint.
pub fn run(out: &Path) -> anyhow::Result<Status> {
    let key = SecretKey::generate();
    key.save_new(out)?;
    println!(
        "wrote key {} (fingerprint {}); keep it secret and back it up: \
         without it no copy marked with it can be traced",
        out.display(),
        key.fingerprint()
    );
    Ok(Status::Success)
}
