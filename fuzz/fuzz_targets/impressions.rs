//! Impression mapping from arbitrary evaluation answers and exposure requests, and the gzip
//! decoding of tapped bodies. Never panics; every record written is a whole, typed record;
//! whatever the answer reader reads, serde_json reads the same; an entity context kept as
//! Flagr sent it is what rebuilding it gives.
#![no_main]
use flaghook::derive::json_of;
use flaghook::flagr::KnownFlags;
use flaghook::impressions::{
    encode_evaluation, from_exposures, sdk_from_user_agent, Context, Encoded, Gate, Impression,
};
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
    flaghook::impressions::check_answer_reader(data);
    flaghook::impressions::check_context_as_sent(data);
    let ctx = Context::default();
    let known = KnownFlags::new();
    let mut out = Encoded::default();
    if encode_evaluation(data, &ctx, &Gate::recording(true, &known), &mut out).is_ok() {
        for r in out.records() {
            serde_json::from_slice::<Impression>(r).expect("a whole record");
        }
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    for r in from_exposures(&v, &v, &ctx, &Gate::all()) {
        serde_json::to_vec(&r).unwrap();
    }
});
