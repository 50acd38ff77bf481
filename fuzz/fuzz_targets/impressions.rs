//! Impression mapping from arbitrary evaluation answers and exposure requests, and the gzip
//! decoding of tapped bodies. Never panics; every record serialises.
#![no_main]
use flaghook::derive::json_of;
use flaghook::flagr::KnownFlags;
use flaghook::impressions::{from_evaluation, from_exposures, sdk_from_user_agent, Context, Gate};
use flaghook::proxy::Captured;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let gzip = http::HeaderValue::from_static("gzip");
    let _ = json_of(
        &Captured::Complete(bytes::Bytes::copy_from_slice(data)),
        Some(&gzip),
        1 << 16,
    );
    let _ = sdk_from_user_agent(std::str::from_utf8(data).ok());
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let ctx = Context::default();
    let known = KnownFlags::new();
    let gate = Gate::recording(false, &known);
    for r in from_evaluation(&v, &ctx, &gate)
        .iter()
        .chain(from_exposures(&v, &v, &ctx, &Gate::all()).iter())
    {
        serde_json::to_vec(r).unwrap();
    }
});
