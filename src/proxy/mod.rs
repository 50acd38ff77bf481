//! The hot path: a transparent HTTP proxy in front of Flagr, built as a tower middleware stack
//! that taps the calls flaghook cares about.
//!
//! In: client connections (HTTP/1.1, h2c). Out: Flagr's answers, unchanged, and for inspected
//! routes an [`Exchange`] on the tap channel.
//! Never: waits for derivation or delivery; a full tap channel drops the copy, not the request.
//!
//! A request passes the layers from the outside in, the response from the inside out:
//!
//! ```text
//! Classify      which of Flagr's routes it is (measure.rs)
//! Measure       in flight, count and time by route class (measure.rs)
//! GitSyncMark   git sync's own calls marked, marker headers removed (marks.rs)
//! Tap           bodies of inspected routes copied; an Exchange when the answer ends (tap/)
//! Legacy        Flagr 1.1.x: the flag read before and after a mutation (legacy.rs)
//! Forwarded     hop-by-hop headers dropped both ways (headers.rs)
//! Upstream      X-Forwarded-* set as the request is written; Flagr over own or pooled
//!               connections; 502/504 of flaghook's own (upstream/)
//! ```
//!
//! tower-http's own layers were weighed for each job: its timeout answers 408 where a proxy
//! owes 504, and its trace and request-id layers add work (and a header) to every request on
//! a path meant to stay transparent and cheap; the admin listener uses them instead.

mod answer;
mod headers;
mod legacy;
mod marks;
mod measure;
mod metrics;
mod server;
pub mod tap;
mod upstream;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use http::header::HeaderName;
use hyper::body::Incoming;
use tower::ServiceBuilder;

pub use answer::{error_response, OwnAnswer};
pub use headers::{strip_hop_by_hop, Forwarded, ForwardedLayer, StripAnswer};
pub use legacy::{Legacy, LegacyLayer, LegacyStates};
pub use marks::{GitSyncCommit, GitSyncMark, GitSyncMarkLayer};
pub use measure::{Classify, ClassifyLayer, Measure, MeasureLayer, Measured};
pub use metrics::{ProxyMetrics, UpstreamFailure};
pub use server::{bind, serve, start};
pub use tap::{
    Captured, DropStage, Exchange, PassAnswer, Tap, TapBody, TapLayer, TapMetrics, TapSender,
};
#[cfg(fuzzing)]
pub use upstream::fuzz_answer;
pub use upstream::{
    Carried, OwnConnection, PeerAddr, Quiet, Upstream, UpstreamBody, UpstreamError, WireBody,
};

use crate::config::ProxyConfig;
use crate::flagr::{FlagrClient, RouteTable};

/// The whole stack, as [`Proxy::stack`] builds it.
pub type Proxy =
    Classify<Measure<GitSyncMark<Tap<Legacy<Forwarded<Upstream<TapBody<Incoming>>>>>>>>;

/// Why the proxy could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("flagr.user_header: not a header name")]
    UserHeader(#[source] http::header::InvalidHeaderName),
}

/// What the stack is built from.
pub struct ProxyParts<'a> {
    pub cfg: &'a ProxyConfig,
    /// `flagr.user_header`: the header Flagr reads the user from.
    pub user_header: &'a str,
    /// Copy evaluations and exposures (an impression webhook wants them).
    pub inspect_impressions: bool,
    /// What git sync's calls carry.
    pub gitsync_token: &'a str,
    pub tap: TapSender,
    pub metrics: Arc<ProxyMetrics>,
    /// True while the upstream is a legacy Flagr.
    pub legacy: Arc<AtomicBool>,
    pub flagr: FlagrClient,
}

impl Proxy {
    /// Composes the layers in the order above.
    pub fn stack(p: ProxyParts<'_>) -> Result<Proxy, ProxyError> {
        let routes = RouteTable::new(&p.cfg.path_prefix);
        let user_header = HeaderName::try_from(p.user_header).map_err(ProxyError::UserHeader)?;
        Ok(ServiceBuilder::new()
            .layer(ClassifyLayer::new(routes.clone()))
            .layer(MeasureLayer::new(p.metrics.clone()))
            .layer(GitSyncMarkLayer::new(p.gitsync_token))
            .layer(TapLayer::new(
                p.tap,
                routes,
                p.inspect_impressions,
                user_header,
            ))
            .layer(LegacyLayer::new(p.legacy, p.flagr))
            .layer(ForwardedLayer)
            .service(Upstream::new(p.cfg, p.metrics)?))
    }
}
