//! Link order: the functions flaghook runs at start-up and on its request, delivery and
//! follower paths are placed together at the front of `.text` (the list is
//! `link/symbol-order.txt`, made by `scripts/link-order`). The kernel maps a binary's code in
//! 64 KiB runs around each page first touched, so code that runs, spread over the whole binary,
//! kept most of it resident; together it spans a few MiB. Names missing from the list (a
//! dependency updated, a function renamed) only lose their place: the link never fails on it.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link/symbol-order.txt");
    println!("cargo:rerun-if-env-changed=FLAGHOOK_LINK_ORDER");
    if lld_is_the_linker() {
        let list = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("link/symbol-order.txt");
        println!(
            "cargo:rustc-link-arg-bin=flaghook=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo:rustc-link-arg-bin=flaghook=-Wl,--no-warn-symbol-ordering");
    }
}

/// Only lld reads an ordering file (GNU ld, gold and mold refuse the option), so the list is
/// passed only where rustc links with its own lld: x86_64 Linux from Rust 1.90 on, with no
/// linker chosen in a cargo config or in RUSTFLAGS. `FLAGHOOK_LINK_ORDER=0` leaves it out.
fn lld_is_the_linker() -> bool {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("FLAGHOOK_LINK_ORDER") == "0"
        || var("TARGET") != "x86_64-unknown-linux-gnu"
        || std::env::var_os("RUSTC_LINKER").is_some()
    {
        return false;
    }
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    if ["fuse-ld", "linker-flavor", "linker-features", "linker="]
        .iter()
        .any(|f| flags.contains(f))
    {
        return false;
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    // "rustc 1.95.0 (…)": the minor version is the second number.
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    minor.is_some_and(|m| m >= 90)
}
