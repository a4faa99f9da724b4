//! Keyed pseudo-random tile: which chip carries what, and each chip's sign.
//!
//! The mark is a 64×64-chip tile repeated over the image. Its chips are split
//! by a keyed permutation into three disjoint roles, each with its own key
//! stream so that the statistics can treat them as independent:
//! - **sync** chips (known to the detector) fix translation, flips and the
//!   pattern variant;
//! - **data** chips carry the convolutionally coded serial, spread by keyed signs;
//! - **verify** chips carry a ±1 sequence derived from the serial itself: the
//!   detector's false-alarm statistic is computed on these alone.
//!
//! A *variant* (one of [`VARIANTS`]) re-draws everything, and each document
//! gets its own, so that averaging many different marked drafts does not
//! reveal one fixed pattern. Knows nothing of images.
//!
//! The mapping from ChaCha20 output to numbers is our own and versioned
//! ([`PATTERN_VERSION`]): rand's distributions may change between releases,
//! a mark issued today must still be found after an upgrade.

use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::key::SecretKey;
use crate::payload;

/// Version of the chip layout and of the number mapping below.
pub const PATTERN_VERSION: u8 = 1;
/// Tile side in chips.
pub const TILE: usize = 64;
/// Chips in one tile.
pub const CHIPS: usize = TILE * TILE;
/// Sync chips per tile. Sync must beat the maximum over
/// 8 flips × 128² half-chip shifts × [`VARIANTS`] of noise (≈ 5.5 σ).
pub const SYNC_CHIPS: usize = 896;
/// Verify chips per tile: the false-alarm statistic lives on these.
pub const VERIFY_CHIPS: usize = 1152;
/// Data chips per tile: the rest. ≈ 18 chips per coded bit, so the decoder
/// breaks down at about the same chip SNR as sync and verify.
pub const DATA_CHIPS: usize = CHIPS - SYNC_CHIPS - VERIFY_CHIPS;
/// Number of pattern variants; a document's variant is derived from its content.
pub const VARIANTS: u32 = 32;

/// The role of each chip and the signs that do not depend on the serial.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The variant this layout was drawn for.
    pub variant: u32,
    /// Chip indices (row-major in the tile) of the sync chips.
    pub sync_idx: Vec<u16>,
    /// ±1 value of each sync chip.
    pub sync_sign: Vec<f32>,
    /// Chip indices of the data chips.
    pub data_idx: Vec<u16>,
    /// ±1 spreading sign of each data chip.
    pub data_sign: Vec<f32>,
    /// Coded-bit index carried by each data chip.
    pub data_bit: Vec<u16>,
    /// Chip indices of the verify chips.
    pub verify_idx: Vec<u16>,
}

/// Keyed ChaCha20 stream for one purpose.
fn stream(key: &SecretKey, label: &str, parts: &[&[u8]]) -> ChaCha20Rng {
    ChaCha20Rng::from_seed(key.derive_seed(label, parts))
}

/// ±1 from one bit of the stream.
fn signs(rng: &mut ChaCha20Rng, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let word = rng.next_u32();
        for bit in 0..32 {
            if out.len() == n {
                break;
            }
            out.push(if (word >> bit) & 1 == 1 { 1.0 } else { -1.0 });
        }
    }
    out
}

/// Uniform integer in `0..n` by rejection (no modulo bias), our own mapping.
fn below(rng: &mut ChaCha20Rng, n: u32) -> u32 {
    let zone = u32::MAX - (u32::MAX % n);
    loop {
        let x = rng.next_u32();
        if x < zone {
            return x % n;
        }
    }
}

impl Layout {
    /// Draws the layout of `variant` under `key`.
    pub fn new(key: &SecretKey, variant: u32) -> Self {
        let v = variant.to_le_bytes();
        let ver = [PATTERN_VERSION];
        let mut perm_rng = stream(key, "layout", &[&ver, &v]);
        let mut perm: Vec<u16> = (0..CHIPS as u16).collect();
        for i in (1..CHIPS).rev() {
            let j = below(&mut perm_rng, i as u32 + 1) as usize;
            perm.swap(i, j);
        }
        let sync_idx = perm[..SYNC_CHIPS].to_vec();
        let data_idx = perm[SYNC_CHIPS..SYNC_CHIPS + DATA_CHIPS].to_vec();
        let verify_idx = perm[SYNC_CHIPS + DATA_CHIPS..].to_vec();
        let sync_sign = signs(&mut stream(key, "sync", &[&ver, &v]), SYNC_CHIPS);
        let data_sign = signs(&mut stream(key, "spread", &[&ver, &v]), DATA_CHIPS);
        // The permutation already scatters chips; bit k of chip i is i mod n,
        // so every coded bit gets the same number of chips (±1).
        let data_bit = (0..DATA_CHIPS)
            .map(|i| (i % payload::CODED_BITS) as u16)
            .collect();
        Layout {
            variant,
            sync_idx,
            sync_sign,
            data_idx,
            data_sign,
            data_bit,
            verify_idx,
        }
    }

    /// The ±1 verify chips of one serial: an independent stream per serial,
    /// so a guilty copy's chips look like noise to an innocent's.
    pub fn verify_signs(key: &SecretKey, variant: u32, serial: u32) -> Vec<f32> {
        let ver = [PATTERN_VERSION];
        signs(
            &mut stream(
                key,
                "verify",
                &[&ver, &variant.to_le_bytes(), &serial.to_le_bytes()],
            ),
            VERIFY_CHIPS,
        )
    }

    /// The full ±1 tile (row-major, [`CHIPS`] values) carrying `serial`.
    pub fn tile(&self, key: &SecretKey, serial: u32) -> Vec<f32> {
        let coded = payload::encode(serial);
        let mut tile = vec![0.0f32; CHIPS];
        for (&i, &s) in self.sync_idx.iter().zip(&self.sync_sign) {
            tile[i as usize] = s;
        }
        for ((&i, &s), &b) in self
            .data_idx
            .iter()
            .zip(&self.data_sign)
            .zip(&self.data_bit)
        {
            let bit = if coded[b as usize] { -1.0 } else { 1.0 };
            tile[i as usize] = s * bit;
        }
        let verify = Self::verify_signs(key, self.variant, serial);
        for (&i, &s) in self.verify_idx.iter().zip(&verify) {
            tile[i as usize] = s;
        }
        tile
    }
}

/// The variant of a document, from a digest of its content.
pub fn document_variant(key: &SecretKey, document_digest: &[u8]) -> u32 {
    let seed = key.derive_seed("variant", &[&[PATTERN_VERSION], document_digest]);
    u32::from_le_bytes([seed[0], seed[1], seed[2], seed[3]]) % VARIANTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_partition_the_tile() {
        let layout = Layout::new(&SecretKey::from_bytes([1; 32]), 3);
        let mut seen = vec![false; CHIPS];
        for &i in layout
            .sync_idx
            .iter()
            .chain(&layout.data_idx)
            .chain(&layout.verify_idx)
        {
            assert!(!seen[i as usize]);
            seen[i as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn tile_is_pinned_for_a_fixed_key() {
        // A change here means marks issued before can no longer be read.
        let key = SecretKey::from_bytes([9; 32]);
        let tile = Layout::new(&key, 0).tile(&key, 0xdead_beef);
        let packed: u64 = tile[..64]
            .iter()
            .enumerate()
            .fold(0, |acc, (i, &v)| acc | (((v > 0.0) as u64) << i));
        assert_eq!(packed, PINNED_TILE_PREFIX);
    }

    const PINNED_TILE_PREFIX: u64 = 2936005472694759611;

    #[test]
    fn variants_and_serials_change_the_tile() {
        let key = SecretKey::from_bytes([2; 32]);
        let a = Layout::new(&key, 0).tile(&key, 1);
        let b = Layout::new(&key, 1).tile(&key, 1);
        let c = Layout::new(&key, 0).tile(&key, 2);
        let agree = |x: &[f32], y: &[f32]| x.iter().zip(y).filter(|(p, q)| p == q).count();
        assert!(agree(&a, &b) < CHIPS * 55 / 100);
        // Same variant, other serial: sync chips agree, data/verify mostly not.
        let ab = agree(&a, &c);
        assert!(ab > SYNC_CHIPS && ab < CHIPS * 80 / 100, "{ab}");
    }
}
