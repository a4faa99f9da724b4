//! leakmark: keyed invisible watermarks that trace leaked design drafts
//! back to the recipient who leaked them.
#![deny(missing_docs)]

pub mod error;
pub mod imageio;

pub use error::{Error, Result};
