//! The Prometheus registry every module registers its own metrics into, all named `flaghook_`,
//! and the pieces they are built from: label sets whose every value is known ([`labels!`]), so
//! their series exist at 0 from the start, and bounded labels for statuses and methods.
//!
//! In: registrations from each module's metrics (`ProxyMetrics`, `DeliveryMetrics`, ...).
//! Out: the text exposition format for `/metrics`.
//! Never: takes an unbounded label value (URLs, error texts); endpoint and repository labels
//! are configured ids.

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, TextEncoder,
};

/// A label whose values are all known: `ALL` lists them, so every series can start at 0.
macro_rules! labels {
    ($(#[$m:meta])* $vis:vis enum $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name { $($variant),+ }

        impl $name {
            /// Every value, in order.
            $vis const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The label value as exported.
            $vis fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
    };
}
pub(crate) use labels;

/// The one registry. Names are static and unique, so registering cannot fail at run time.
pub struct Registry {
    inner: prometheus::Registry,
}

impl Default for Registry {
    fn default() -> Self {
        let r = Self {
            inner: prometheus::Registry::new(),
        };
        let build = IntGauge::with_opts(
            Opts::new("flaghook_build_info", "Always 1; the version is a label.")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )
        .expect("valid metric");
        build.set(1);
        r.register(build);
        r
    }
}

impl Registry {
    fn register<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        self.inner
            .register(Box::new(c.clone()))
            .expect("metric names are unique");
        c
    }

    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help).expect("valid metric"))
    }

    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("valid metric"))
    }

    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    pub fn histogram(&self, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
        self.register(
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric"),
        )
    }

    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: Vec<f64>,
    ) -> HistogramVec {
        self.register(
            HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("valid metric"),
        )
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.inner.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// 100 µs .. ~13 s: covers loopback proxying and webhook round trips alike.
pub fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.0001, 2.0, 18).expect("valid buckets")
}

/// `2xx`, `4xx`, ...: a bounded label for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The method as a bounded label.
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    labels! {
        pub(crate) enum Colour { Red => "red", Blue => "blue" }
    }

    #[test]
    fn label_sets_list_every_value_and_the_registry_exports_them() {
        assert_eq!(
            Colour::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            ["red", "blue"]
        );
        let r = Registry::default();
        let v = r.counter_vec("flaghook_test_total", "test", &["colour"]);
        for c in Colour::ALL {
            v.with_label_values(&[c.as_str()]);
        }
        let text = r.encode();
        assert!(
            text.contains("flaghook_test_total{colour=\"blue\"} 0"),
            "{text}"
        );
        assert!(text.contains("flaghook_build_info{version="), "{text}");
    }
}
