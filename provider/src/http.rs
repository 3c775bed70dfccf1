//! The local HTTP endpoint (`--listen`): put events into an app's channel and
//! watch a channel, so the embedded broker is usable without writing code.
//!
//! - `POST /v1/apps/{app}/channels/{channel}` takes one CloudEvent in the
//!   CloudEvents HTTP binding (binary or structured mode) and publishes it as
//!   an outside producer would; answers 202.
//! - `GET /v1/apps/{app}/channels/{channel}` streams the events published on
//!   the channel as server-sent events, one JSON format document each.
//!
//! Errors answer with a status and `{"error": "...", "case": "..."}`.
//!
//! The endpoint runs on a thread of its own with its own async runtime, so
//! that handlers keeping the main runtime's workers busy never delay it.

use crate::cloudevents::{self, json};
use crate::dispatch::AppRuntime;
use crate::host::MessagingError;
use crate::provider::Provider;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The route the endpoints live under.
pub const CHANNEL_ROUTE: &str = "/v1/apps/{app}/channels/{channel}";

/// What every request sees: the apps, and whether the provider is stopping.
#[derive(Clone)]
struct Shared {
    apps: Arc<BTreeMap<String, Arc<AppRuntime>>>,
    stopping: CancellationToken,
}

/// The endpoint's routes, serving the provider's apps.
pub fn router(provider: &Provider) -> Router {
    router_with(provider, CancellationToken::new())
}

fn router_with(provider: &Provider, stopping: CancellationToken) -> Router {
    let shared = Shared {
        apps: Arc::new(provider.apps().clone()),
        stopping,
    };
    Router::new()
        .route(CHANNEL_ROUTE, get(watch).post(publish))
        .with_state(shared)
}

/// The endpoint serving on its own thread.
pub struct Endpoint {
    stopping: CancellationToken,
    close: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Endpoint {
    /// Serves the provider's apps on `listener` from a thread of its own.
    pub fn start(listener: std::net::TcpListener, provider: &Provider) -> anyhow::Result<Endpoint> {
        listener.set_nonblocking(true)?;
        let stopping = CancellationToken::new();
        let router = router_with(provider, stopping.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (close, closed) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("http-endpoint".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let serve = async {
                        let listener = tokio::net::TcpListener::from_std(listener)?;
                        axum::serve(listener, router).await
                    };
                    tokio::select! {
                        served = serve => if let Err(e) = served {
                            tracing::error!("the HTTP endpoint stopped: {e}");
                        },
                        _ = closed => {}
                    }
                });
                // Open watches end with the runtime.
                runtime.shutdown_timeout(Duration::from_millis(100));
            })?;
        Ok(Endpoint {
            stopping,
            close: Some(close),
            thread: Some(thread),
        })
    }

    /// The provider is stopping: publishes are refused (503); watches go on,
    /// so watchers see what handlers still publish while they drain.
    pub fn stopping(&self) {
        self.stopping.cancel();
    }
}

impl Drop for Endpoint {
    /// Stops serving and ends open watches.
    fn drop(&mut self) {
        self.stopping.cancel();
        if let Some(close) = self.close.take() {
            let _ = close.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An error answer: a status and a JSON body that says what is wrong.
struct ApiError(StatusCode, String, &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.1, "case": self.2 });
        (self.0, Json(body)).into_response()
    }
}

impl From<MessagingError> for ApiError {
    fn from(e: MessagingError) -> Self {
        let status = match &e {
            MessagingError::QueueOrTopicNotFound(_) => StatusCode::NOT_FOUND,
            MessagingError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            MessagingError::UnsupportedMessageFormat(_) => StatusCode::BAD_REQUEST,
            MessagingError::InsufficientPermissions(_) => StatusCode::FORBIDDEN,
            MessagingError::ServiceUnavailable(_) | MessagingError::DeliveryFailed(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            MessagingError::ConnectionLost(_) => StatusCode::BAD_GATEWAY,
            MessagingError::UnexpectedError(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string(), e.case())
    }
}

fn find_app(
    apps: &BTreeMap<String, Arc<AppRuntime>>,
    name: &str,
) -> Result<Arc<AppRuntime>, ApiError> {
    apps.get(name).cloned().ok_or_else(|| {
        let known: Vec<&str> = apps.keys().map(String::as_str).collect();
        ApiError(
            StatusCode::NOT_FOUND,
            format!("no app `{name}` is loaded (loaded: {})", known.join(", ")),
            "app-not-found",
        )
    })
}

async fn publish(
    State(shared): State<Shared>,
    Path((app, channel)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    if shared.stopping.is_cancelled() {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the provider is stopping and takes no new events".into(),
            "service-unavailable",
        ));
    }
    let app = find_app(&shared.apps, &app)?;
    let event = cloudevents::http::decode(&headers, &body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e, "unsupported-message-format"))?;
    app.publish_external(&channel, &event).await?;
    let body = serde_json::json!({ "app": app.app.name, "channel": channel, "id": event.id });
    Ok((StatusCode::ACCEPTED, Json(body)))
}

async fn watch(
    State(shared): State<Shared>,
    Path((app, channel)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let app = find_app(&shared.apps, &app)?;
    let subscription = app.watch(&channel).await?;
    // A first comment tells the client the subscription is in place.
    let opened = futures::stream::once(async {
        Ok::<_, Infallible>(SseEvent::default().comment("subscribed"))
    });
    let events = futures::stream::unfold(subscription, |mut sub| async move {
        let delivery = sub.next().await?;
        let (event, _, ack) = delivery.into_parts();
        let _ = ack.ack().await;
        let doc = String::from_utf8(json::encode(&event)).expect("the JSON format is UTF-8");
        Some((
            Ok::<_, Infallible>(SseEvent::default().id(event.id.clone()).data(doc)),
            sub,
        ))
    });
    Ok(Sse::new(futures::StreamExt::chain(opened, events))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
