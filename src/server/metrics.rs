//! The opt-in `/metrics` route: Prometheus (OpenMetrics) text with the server's rooms,
//! connections, messages and bytes, slow-consumer closes, auth failures, REST requests
//! by status, storage commits (latency histogram, failures) and doc sizes.
//!
//! Label values are escaped (the encoder writes them as given), and only names the server
//! chose become labels: each workspace's doc has its own series, while dynamic docs, named
//! by whoever connects, are summed into one (a series per room name would let clients grow
//! the scrape without bound). A scrape runs on a blocking thread: it may measure docs.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::doc_sizes::DocSizes;
use super::ServerState;
use crate::storage::COMMITS;
use crate::sync::SyncHub;

type Labels = Vec<(String, String)>;

/// The server's metrics registry.
pub(crate) struct Metrics {
    registry: Registry,
    http: Family<Labels, Counter>,
}

impl Metrics {
    pub fn new(hub: Arc<SyncHub>) -> Metrics {
        let mut registry = Registry::with_prefix("epicenter");
        let http = Family::<Labels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by status",
            http.clone(),
        );
        registry.register_collector(Box::new(SyncCollector {
            hub,
            sizes: DocSizes::default(),
        }));
        Metrics { registry, http }
    }

    fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Reads the sync and storage counters at each scrape.
struct SyncCollector {
    hub: Arc<SyncHub>,
    sizes: DocSizes,
}

impl std::fmt::Debug for SyncCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncCollector").finish_non_exhaustive()
    }
}

/// A label value escaped as the text format wants it (backslash, double quote, newline).
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for SyncCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = &self.hub.stats;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let snapshot = self.hub.stats();
        gauge(
            &mut encoder,
            "sync_rooms",
            "Rooms loaded now",
            snapshot.rooms_open as i64,
        )?;
        gauge(
            &mut encoder,
            "sync_connections",
            "Sync connections open now",
            snapshot.connections_open as i64,
        )?;
        counter(
            &mut encoder,
            "sync_connections_opened",
            "Sync connections accepted",
            snapshot.connections_opened,
        )?;
        counter(
            &mut encoder,
            "sync_messages_received",
            "Sync messages received",
            load(&stats.messages_in),
        )?;
        counter(
            &mut encoder,
            "sync_bytes_received",
            "Bytes of sync messages received",
            load(&stats.bytes_in),
        )?;
        counter(
            &mut encoder,
            "sync_messages_sent",
            "Sync messages sent",
            load(&stats.messages_out),
        )?;
        counter(
            &mut encoder,
            "sync_bytes_sent",
            "Bytes of sync messages sent",
            load(&stats.bytes_out),
        )?;
        counter(
            &mut encoder,
            "sync_slow_consumer_closes",
            "Sync connections closed because their send queue overflowed",
            snapshot.slow_consumer_closes,
        )?;
        counter(
            &mut encoder,
            "auth_failures",
            "Requests and sync connections refused for lack of a valid token",
            snapshot.auth_failures,
        )?;
        counter(
            &mut encoder,
            "http_header_timeouts",
            "Connections closed because they sent no complete request headers in time",
            snapshot.header_timeouts,
        )?;

        let commits = COMMITS.snapshot();
        counter(
            &mut encoder,
            "storage_commit_failures",
            "Storage commits that failed",
            commits.failures,
        )?;
        let mut histogram = encoder.encode_descriptor(
            "storage_commit_seconds",
            "Time of each storage commit (one fsync for a whole batch)",
            None,
            MetricType::Histogram,
        )?;
        histogram.encode_histogram::<Labels>(
            commits.seconds,
            commits.commits,
            &commits.buckets,
            None,
        )?;

        let sizes = self.sizes.sizes(self.hub.docs());
        let mut family = encoder.encode_descriptor(
            "doc_bytes",
            "Size of each workspace doc's full state, encoded (re-measured at most once a \
             minute; in between, plus the bytes of the updates since)",
            None,
            MetricType::Gauge,
        )?;
        let mut dynamic = 0;
        for (doc, is_dynamic, bytes) in sizes {
            if is_dynamic {
                dynamic += bytes;
                continue;
            }
            let labels: Labels = vec![("doc".into(), escape(&doc))];
            ConstGauge::new(bytes as i64).encode(family.encode_family(&labels)?)?;
        }
        gauge(
            &mut encoder,
            "dynamic_doc_bytes",
            "Size of all loaded dynamic docs together, measured as doc_bytes",
            dynamic as i64,
        )?;
        Ok(())
    }
}

/// `GET /metrics`.
pub(crate) async fn scrape(State(state): State<ServerState>) -> Response {
    let rendered = tokio::task::spawn_blocking(move || state.inner.metrics.render()).await;
    match rendered {
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(Err(_)) | Err(_) => super::ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics",
        )
        .into_response(),
    }
}

/// Counts every answered request by status.
pub(crate) async fn count(
    State(state): State<ServerState>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    let labels = vec![("status".to_string(), response.status().as_u16().to_string())];
    state.inner.metrics.http.get_or_create(&labels).inc();
    response
}
