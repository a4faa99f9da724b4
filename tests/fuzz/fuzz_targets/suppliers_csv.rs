//! The suppliers-CSV parser: any text gives rows or `Error::SupplierCsv`, never a panic.
#![no_main]

use std::path::Path;

use leakmark::ledger::parse_suppliers_csv;
use leakmark::Error;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_suppliers_csv(text, Path::new("fuzz.csv")) {
        Ok(_) | Err(Error::SupplierCsv { .. }) => {}
        Err(other) => panic!("unexpected error kind: {other:?}"),
    }
});
