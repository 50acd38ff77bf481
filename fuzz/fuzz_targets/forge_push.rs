//! Forge push parsing and signature checks on arbitrary bodies and headers. Never panics; a
//! random signature never verifies.
#![no_main]
use flaghook::gitsync::forge::{parse, verify, Forge};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(2, |b| *b == 0xff);
    let (sig, body) = (parts.next().unwrap_or(&[]), parts.next().unwrap_or(&[]));
    let sig = String::from_utf8_lossy(sig).replace(['\r', '\n', '\0'], "");
    for (forge, ev, evv) in [
        (Forge::GitHub, "x-github-event", "push"),
        (Forge::GitLab, "x-gitlab-event", "Push Hook"),
        (Forge::Gitea, "x-gitea-event", "push"),
        (Forge::Forgejo, "x-forgejo-event", "push"),
        (Forge::Generic, "x-flaghook-delivery", "d"),
    ] {
        let mut h = http::HeaderMap::new();
        h.insert(ev, http::HeaderValue::from_static(evv));
        if let Ok(v) = http::HeaderValue::from_str(&sig) {
            for name in [
                "x-hub-signature-256",
                "x-gitlab-token",
                "x-gitea-signature",
                "x-forgejo-signature",
                "x-flaghook-signature",
            ] {
                h.insert(name, v.clone());
            }
        }
        let _ = parse(forge, &h, body);
        // The fuzzer would have to forge an HMAC to get past this.
        if verify(forge, Some("fuzz-secret-that-is-long"), &h, body).is_ok() {
            assert!(forge == Forge::GitLab && sig == "fuzz-secret-that-is-long");
        }
    }
});
