//! The tap layer alone, in your own tower stack in front of Flagr: every flag mutation that
//! passes becomes an [`Exchange`] on a channel, while the bytes pass untouched.
//!
//! Here the "Flagr" behind the layer is a `service_fn` that answers at once, so the example
//! runs anywhere: `cargo run --example embed_tap`. In a real server it is your HTTP client
//! to Flagr, and the stack is served by axum or hyper as usual.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use flaghook::flagr::RouteTable;
use flaghook::metrics::Registry;
use flaghook::proxy::tap::ByteBudget;
use flaghook::proxy::{TapBody, TapLayer, TapMetrics, TapSender};
use http::header::HeaderName;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (tx, mut exchanges) = tokio::sync::mpsc::channel(64);
    let tap = TapSender::new(
        tx,
        Arc::new(TapMetrics::new(&Registry::default())),
        1 << 20,                   // copy bodies up to 1 MiB
        ByteBudget::new(32 << 20), // all copies waiting: 32 MiB at most
    );
    let stack = ServiceBuilder::new()
        .layer(TapLayer::new(
            tap,
            RouteTable::new(""),
            false,
            HeaderName::from_static("x-email"),
        ))
        .service(tower::service_fn(
            |req: Request<TapBody<Full<Bytes>>>| async move {
                // Stands in for Flagr: reads the request, answers with a created flag.
                let _ = req.into_body().collect().await;
                let flag = r#"{"id":1,"key":"checkout","description":"new checkout"}"#;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                    flag.as_bytes(),
                ))))
            },
        ));
    let req = Request::post("/api/v1/flags")
        .header("x-email", "alice@example.com")
        .body(Full::new(Bytes::from_static(
            br#"{"description":"new checkout","key":"checkout"}"#,
        )))
        .expect("a valid request");
    let resp = stack.oneshot(req).await.expect("the stack never fails");
    let answer = resp.into_body().collect().await.expect("a body").to_bytes();
    println!("client got: {}", String::from_utf8_lossy(&answer));
    // The exchange arrives once the response body has been read to its end.
    if let Ok(ex) = exchanges.try_recv() {
        println!(
            "tapped: {:?} by {:?}, request {} bytes, response {} bytes",
            ex.route,
            ex.meta.user,
            ex.request_body.bytes().map_or(0, |b| b.len()),
            ex.response_body.bytes().map_or(0, |b| b.len()),
        );
    }
}
