//! The opt-in `/metrics` route: Prometheus (OpenMetrics) text with the server's rooms,
//! connections, messages and bytes, slow-consumer closes, auth failures, REST requests
//! by status, storage commits (latency histogram, failures) and doc sizes.

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
        registry.register_collector(Box::new(SyncCollector { hub }));
        Metrics { registry, http }
    }

    fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Reads the sync and storage counters at each scrape.
#[derive(Debug)]
struct SyncCollector {
    hub: Arc<SyncHub>,
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

        let sizes = self.hub.doc_sizes();
        let mut family = encoder.encode_descriptor(
            "doc_bytes",
            "Size of each loaded doc's full state, encoded",
            None,
            MetricType::Gauge,
        )?;
        for (doc, bytes) in sizes {
            let labels: Labels = vec![("doc".into(), doc)];
            ConstGauge::new(bytes as i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// `GET /metrics`.
pub(crate) async fn scrape(State(state): State<ServerState>) -> Response {
    match state.inner.metrics.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => super::ApiError::new(
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
