//! One file per command. Each `run` returns a [`super::Status`] or the
//! error that stopped it.

pub mod audit;
pub mod demo;
pub mod detect;
pub mod embed;
pub mod evidence;
pub mod issue;
pub mod keygen;
pub mod ledger;
pub mod supplier;
pub mod trace;
