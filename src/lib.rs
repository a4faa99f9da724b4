//! leakmark: keyed invisible watermarks that trace leaked design drafts
//! back to the recipient who leaked them.
#![deny(missing_docs)]

pub mod attack;
pub mod detect;
pub mod embed;
pub mod error;
pub mod fft;
pub mod imageio;
pub mod informed;
pub mod key;
pub mod ledger;
pub mod mask;
pub mod pattern;
pub mod payload;
pub mod plane;
pub mod register;
pub mod stats;
pub mod sync;

pub use error::{Error, Result};
pub use key::SecretKey;
