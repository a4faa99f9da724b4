//! Untrusted bytes → decode (limits, orientation, frame walk) → blind detect.
//!
//! Neither may panic, hang or allocate without bound, whatever the bytes.
#![no_main]

use std::sync::OnceLock;

use leakmark::detect::{detect, DetectOptions};
use leakmark::imageio::{load_from_memory, LoadLimits};
use leakmark::SecretKey;
use libfuzzer_sys::fuzz_target;

/// Small limits keep each run fast; the limit checks themselves are what
/// is under test, and they do not depend on the numbers.
const LIMITS: LoadLimits = LoadLimits {
    max_pixels: 1 << 20,
    max_alloc_bytes: 64 << 20,
};

fn key() -> &'static SecretKey {
    static KEY: OnceLock<SecretKey> = OnceLock::new();
    KEY.get_or_init(|| SecretKey::from_bytes([7; 32]))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(loaded) = load_from_memory(data, &LIMITS) {
        let found = detect(key(), &loaded.image, &DetectOptions::default());
        // A fuzzer's bytes carry no mark made under this key.
        assert!(!found.detected, "mark found in fuzz input: {found:?}");
    }
});
