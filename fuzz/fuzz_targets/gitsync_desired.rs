//! Desired-state loading and planning on arbitrary files. Never panics; a valid file always
//! plans from an empty Flagr.
#![no_main]
use flaghook::gitsync::{desired, plan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(flags) = desired::load(&[("f.json".to_string(), data.to_vec())]) {
        let ops = plan::plan(&flags, &[], true);
        assert!(ops.len() >= flags.len());
    }
});
