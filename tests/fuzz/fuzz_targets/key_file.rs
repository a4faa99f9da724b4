//! The key-file parser: any text gives a key or `Error::KeyFormat`, never a panic.
#![no_main]

use std::path::Path;

use leakmark::{Error, SecretKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match SecretKey::parse(text, Path::new("fuzz.key")) {
        Ok(_) | Err(Error::KeyFormat { .. }) => {}
        Err(other) => panic!("unexpected error kind: {other:?}"),
    }
});
