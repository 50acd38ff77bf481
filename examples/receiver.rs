//! A webhook receiver for the demo: prints every request that arrives and checks its signature.
//!
//! `cargo run --example receiver -- 127.0.0.1:18090 [secret]`

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use hmac::{Hmac, Mac};
use sha2::Sha256;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:18090".into())
        .parse()
        .expect("an address like 127.0.0.1:18090");
    let secret = args.next();
    let app = axum::Router::new().route(
        "/{*path}",
        post(move |headers: HeaderMap, body: Bytes| {
            let secret = secret.clone();
            async move {
                let sig = headers
                    .get("x-flagr-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let verdict = match &secret {
                    Some(s) => {
                        let mut m = Hmac::<Sha256>::new_from_slice(s.as_bytes()).expect("key");
                        m.update(&body);
                        match hex::decode(sig) {
                            Ok(raw) if m.verify_slice(&raw).is_ok() => "signature ok",
                            _ => "SIGNATURE MISMATCH",
                        }
                    }
                    None => "unsigned",
                };
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                println!(
                    "<- {} flag={} ({}) by {:?} [{verdict}]\n   changes: {}",
                    v["event"]
                        .as_str()
                        .or(v["operation"].as_str())
                        .unwrap_or("?"),
                    v["flag_key"].as_str().unwrap_or("?"),
                    v["flag_id"],
                    v["actor"].as_str().or(v["user"].as_str()).unwrap_or(""),
                    v["changes"]
                );
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    println!("receiver listening on http://{addr}/");
    axum::serve(listener, app).await.expect("serve");
}
