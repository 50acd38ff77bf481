//! Flagr's answer as the proxy's own-connection path reads it, from arbitrary bytes: never
//! panics; a body it says is whole has the length the head gave; a connection goes home only
//! after an answer read whole.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&m, answer)) = data.split_first() else {
        return;
    };
    let method = if m % 4 == 0 { http::Method::HEAD } else { http::Method::GET };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let Some((head, body, kept)) = rt.block_on(flaghook::proxy::fuzz_answer(answer, &method))
    else {
        return;
    };
    assert!(head.status.as_u16() >= 200, "an interim answer passed as the answer");
    if kept {
        assert!(body.is_some(), "a connection went home after a failed body");
    }
    let empty = method == http::Method::HEAD || head.status.as_u16() == 204 || head.status.as_u16() == 304;
    if let (Some(body), false) = (&body, empty) {
        if !head.headers.contains_key("transfer-encoding") {
            if let Some(n) = head.headers.get("content-length").and_then(|v| v.to_str().ok()) {
                if let Ok(n) = n.split(',').next().unwrap_or("").trim().parse::<usize>() {
                    assert_eq!(body.len(), n, "a body read whole is not the length the head gave");
                }
            }
        }
    }
    if empty {
        assert!(body.as_ref().is_some_and(|b| b.is_empty()));
    }
});
