//! `leakmark supplier add|import|list`: the supplier tree in the ledger.

use leakmark::ledger::SupplierNode;

use crate::cli::args::SupplierCommand;
use crate::cli::{key_and_ledger, Context, Status};

/// Runs a `supplier` subcommand.
pub fn run(ctx: &Context, cmd: SupplierCommand) -> anyhow::Result<Status> {
    let (_key, mut ledger) = key_and_ledger(ctx)?;
    match cmd {
        SupplierCommand::Add {
            name,
            parent,
            contact,
        } => {
            let added = ledger.add_supplier(&name, parent.as_deref(), contact.as_deref())?;
            match &parent {
                Some(parent) => println!("added supplier {} under {}", added.name, parent.trim()),
                None => println!("added supplier {} (tier one)", added.name),
            }
        }
        SupplierCommand::Import { file } => {
            let summary = ledger.import_suppliers_csv(&file)?;
            println!(
                "imported {}: {} added, {} updated, {} unchanged",
                file.display(),
                summary.added,
                summary.updated,
                summary.unchanged
            );
        }
        SupplierCommand::List => {
            let tree = ledger.supplier_tree()?;
            if tree.is_empty() {
                eprintln!(
                    "the ledger has no suppliers yet: add them with `leakmark supplier add NAME` \
                     or `leakmark supplier import FILE.csv`"
                );
            }
            let mut lines = Vec::new();
            for node in &tree {
                tree_lines(node, "", None, &mut lines);
            }
            for line in lines {
                println!("{line}");
            }
        }
    }
    Ok(Status::Success)
}

/// Draws `node` and its subtree: `is_last` is `None` for a root, else
/// whether the node is the last child of its parent.
fn tree_lines(node: &SupplierNode, prefix: &str, is_last: Option<bool>, out: &mut Vec<String>) {
    let s = &node.supplier;
    let contact = s
        .contact
        .as_deref()
        .map(|c| format!("  <{c}>"))
        .unwrap_or_default();
    let (branch, child_prefix) = match is_last {
        None => (String::new(), String::new()),
        Some(true) => (format!("{prefix}└── "), format!("{prefix}    ")),
        Some(false) => (format!("{prefix}├── "), format!("{prefix}│   ")),
    };
    out.push(format!("{branch}{}{contact}", s.name));
    let count = node.children.len();
    for (i, child) in node.children.iter().enumerate() {
        tree_lines(child, &child_prefix, Some(i + 1 == count), out);
    }
}
