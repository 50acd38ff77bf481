//! Link order: the functions flaghook runs at start-up and on its request, delivery and
//! follower paths are placed together at the front of `.text` (the list is
//! `link/symbol-order.txt`, made by `scripts/link-order`). The kernel maps a binary's code in
//! 64 KiB runs around each page first touched, so code that runs, spread over the whole binary,
//! kept most of it resident; together it spans a few MiB. Names missing from the list (a
//! dependency updated, a function renamed) only lose their place: the link never fails on it.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link/symbol-order.txt");
    println!("cargo:rerun-if-env-changed=FLAGHOOK_LINK_ORDER");
    // rustc links this target with its own lld, which reads an ordering file; another linker
    // (set in a cargo config) may not, so `FLAGHOOK_LINK_ORDER=0` leaves it out.
    let target = std::env::var("TARGET").unwrap_or_default();
    let wanted = std::env::var("FLAGHOOK_LINK_ORDER").map_or(true, |v| v != "0");
    if target == "x86_64-unknown-linux-gnu" && wanted {
        let list = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("link/symbol-order.txt");
        println!(
            "cargo:rustc-link-arg-bin=flaghook=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo:rustc-link-arg-bin=flaghook=-Wl,--no-warn-symbol-ordering");
    }
}
