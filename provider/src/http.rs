//! The local HTTP endpoint (`--listen`): put events into an app's channel and
//! watch a channel, so the embedded broker is usable without writing code.
//!
//! - `POST /v1/apps/{app}/channels/{channel}` takes one CloudEvent in the
//!   CloudEvents HTTP binding (binary or structured mode) and publishes it as
//!   an outside producer would; answers 202.
//! - `GET /v1/apps/{app}/channels/{channel}` streams the events published on
//!   the channel as server-sent events, one JSON format document each.
//!
//! - `GET /metrics`: the provider's metrics in Prometheus' text format (a
//!   token for every app, when tokens are required).
//! - `GET /healthz` (the process answers) and `GET /readyz` (every app
//!   started and every link connected; 503 with what is not), without a token,
//!   as container orchestrators probe them.
//!
//! `--metrics-listen` serves the last three alone, on an address of their own.
//!
//! Every refusal — from the handlers, the router (unknown route, wrong
//! method), the token check, a body too large or too slow — answers with a
//! status and `{"error": "...", "case": "..."}`.
//!
//! The endpoint guards itself ([`EndpointOptions`]): API tokens
//! ([`access`]), https, a header and a body read timeout, a bound on request
//! bodies, on open watches and on connections. It speaks HTTP/1.1 only, so
//! that the header read timeout covers every connection.
//!
//! The endpoint runs on a thread of its own with its own async runtime, so
//! that handlers keeping the main runtime's workers busy never delay it.

pub mod access;
pub mod tls;

use crate::cloudevents::{self, Event, json};
use crate::dispatch::AppRuntime;
use crate::host::MessagingError;
use crate::provider::{Loaded, Operations, Provider};
use access::{ApiTokens, Caller, Refusal};
use arc_swap::ArcSwap;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, Request, State};
use axum::http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http_body_util::BodyExt as _;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The route the endpoints live under.
pub const CHANNEL_ROUTE: &str = "/v1/apps/{app}/channels/{channel}";

/// How many events a watch may fall behind before its watcher is cut off:
/// a watcher that stops reading must never hold up the channel's
/// publishers (a subscription that is not drained fills its buffer).
pub const WATCH_BACKLOG_EVENTS: usize = 256;

/// How many bytes of events a watch may fall behind (at least one event is
/// always kept, however large).
pub const WATCH_BACKLOG_BYTES: usize = 4 * 1024 * 1024;

/// How the endpoint guards itself. `Default` is what `up --listen` serves
/// with; tests shorten the timeouts.
#[derive(Clone, Debug)]
pub struct EndpointOptions {
    /// The tokens requests must carry; none by default (an open endpoint,
    /// which `up` allows on loopback addresses only).
    pub tokens: ApiTokens,
    /// Serve https with this configuration instead of plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How long a client may take to send a request's headers — and, with
    /// TLS, to finish the handshake; a kept-alive connection idle this long
    /// is closed too. The connection is closed without an answer (10 s).
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's body once its headers
    /// are in; past it the answer is 408 (30 s).
    pub body_read_timeout: Duration,
    /// The largest request body taken; larger ones are answered 413 (2 MiB).
    pub max_body_bytes: usize,
    /// How many watches (`GET` streams) may be open at once; more are
    /// answered 503 (256). A watcher that falls [`WATCH_BACKLOG_EVENTS`]
    /// events or [`WATCH_BACKLOG_BYTES`] behind is disconnected.
    pub max_watchers: usize,
    /// How many connections are served at once; more wait to be accepted
    /// until one closes (1024).
    pub max_connections: usize,
}

impl Default for EndpointOptions {
    fn default() -> Self {
        EndpointOptions {
            tokens: ApiTokens::default(),
            tls: None,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_body_bytes: 2 * 1024 * 1024,
            max_watchers: 256,
            max_connections: 1024,
        }
    }
}

/// What every request sees: the apps, whether the provider is stopping or
/// the endpoint closing, and the endpoint's bounds.
#[derive(Clone)]
struct Shared {
    /// The apps as they run now (a reload swaps them).
    loaded: Arc<ArcSwap<Loaded>>,
    operations: Arc<Operations>,
    stopping: CancellationToken,
    closing: CancellationToken,
    watchers: Arc<Semaphore>,
    options: Arc<EndpointOptions>,
}

/// The endpoint's routes, serving the provider's apps with the default
/// options (the transport ones — TLS, header timeout, connection bound —
/// belong to whoever serves the router; see [`Endpoint`]).
pub fn router(provider: &Provider) -> Router {
    router_with(
        provider,
        CancellationToken::new(),
        CancellationToken::new(),
        EndpointOptions::default(),
        Routes::All,
    )
}

/// Which routes an endpoint serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Routes {
    /// `--messaging-listen`: channels and operations.
    All,
    /// `--metrics-listen`: operations only.
    Operations,
}

fn router_with(
    provider: &Provider,
    stopping: CancellationToken,
    closing: CancellationToken,
    options: EndpointOptions,
    routes: Routes,
) -> Router {
    let shared = Shared {
        loaded: provider.loaded().clone(),
        operations: provider.operations().clone(),
        stopping,
        closing,
        watchers: Arc::new(Semaphore::new(options.max_watchers)),
        options: Arc::new(options),
    };
    let guarded = match routes {
        Routes::All => Router::new().route(CHANNEL_ROUTE, get(watch).post(publish)),
        Routes::Operations => Router::new(),
    };
    // Outermost last: every answer, even a panic's, leaves as JSON.
    guarded
        .route(METRICS_ROUTE, get(metrics))
        .fallback(no_such_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            authenticate,
        ))
        .merge(
            Router::new()
                .route(HEALTH_ROUTE, get(healthz))
                .route(READY_ROUTE, get(readyz)),
        )
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            answer_for_panic,
        ))
        .layer(axum::middleware::map_response(errors_as_json))
        .with_state(shared)
}

/// The metrics route.
pub const METRICS_ROUTE: &str = "/metrics";
/// The liveness route: the process answers.
pub const HEALTH_ROUTE: &str = "/healthz";
/// The readiness route: every app started and every link connected.
pub const READY_ROUTE: &str = "/readyz";

/// The metrics; an app's own token does not reach them, since they name
/// every app.
async fn metrics(State(shared): State<Shared>, Extension(caller): Extension<Caller>) -> Response {
    if matches!(caller, Caller::App(_)) {
        return ApiError(
            StatusCode::FORBIDDEN,
            "the metrics name every app: they need a token for every app, not one app's".into(),
            "forbidden",
        )
        .into_response();
    }
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        )],
        shared.operations.metrics_text(),
    )
        .into_response()
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(shared): State<Shared>) -> Response {
    let readiness = shared.operations.readiness();
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

/// The endpoint serving on its own thread.
pub struct Endpoint {
    stopping: CancellationToken,
    closing: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How long a closing endpoint waits for its connections to write out what
/// they hold (the last events of open watches) before cutting them.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

impl Endpoint {
    /// Serves the provider's apps on `listener` from a thread of its own,
    /// with the default options: open, plain HTTP.
    pub fn start(listener: std::net::TcpListener, provider: &Provider) -> anyhow::Result<Endpoint> {
        Endpoint::start_with(listener, provider, EndpointOptions::default())
    }

    /// Serves the provider's apps on `listener` from a thread of its own.
    pub fn start_with(
        listener: std::net::TcpListener,
        provider: &Provider,
        options: EndpointOptions,
    ) -> anyhow::Result<Endpoint> {
        Endpoint::serve_routes(listener, provider, options, Routes::All)
    }

    /// Serves only `/metrics`, `/healthz` and `/readyz` on `listener`
    /// (`--metrics-listen`), from a thread of its own.
    pub fn start_operations(
        listener: std::net::TcpListener,
        provider: &Provider,
        options: EndpointOptions,
    ) -> anyhow::Result<Endpoint> {
        Endpoint::serve_routes(listener, provider, options, Routes::Operations)
    }

    fn serve_routes(
        listener: std::net::TcpListener,
        provider: &Provider,
        options: EndpointOptions,
        routes: Routes,
    ) -> anyhow::Result<Endpoint> {
        listener.set_nonblocking(true)?;
        let (stopping, closing) = (CancellationToken::new(), CancellationToken::new());
        let router = router_with(
            provider,
            stopping.clone(),
            closing.clone(),
            options.clone(),
            routes,
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let closed = closing.clone();
        let thread = std::thread::Builder::new()
            .name(match routes {
                Routes::All => "http-endpoint".into(),
                Routes::Operations => "metrics-endpoint".into(),
            })
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => serve(listener, router, &options, closed).await,
                        Err(e) => tracing::error!("the HTTP endpoint stopped: {e}"),
                    }
                });
                // Connections that did not finish within the grace end here.
                runtime.shutdown_timeout(Duration::from_millis(100));
            })?;
        Ok(Endpoint {
            stopping,
            closing,
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
    /// Stops serving and ends open watches once they have written out the
    /// events already published to them (up to [`CLOSE_GRACE`]).
    fn drop(&mut self) {
        self.stopping.cancel();
        self.closing.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts connections, at most `max_connections` at a time, and serves
/// each with hyper's HTTP/1 server (for its header read timeout), over TLS
/// when configured. When `closing`, stops accepting, lets each connection
/// finish the response under way, and returns once all have ended or
/// [`CLOSE_GRACE`] has passed.
async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    options: &EndpointOptions,
    closing: CancellationToken,
) {
    let max_connections = options.max_connections.max(1);
    let connections = Arc::new(Semaphore::new(max_connections));
    let accepting = async {
        accept(&listener, router, options, &connections, &closing).await;
    };
    tokio::select! {
        () = accepting => {}
        () = closing.cancelled() => {}
    }
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(CLOSE_GRACE, connections.acquire_many(all)).await;
}

/// Serves connections as they come, until the endpoint closes.
async fn accept(
    listener: &tokio::net::TcpListener,
    router: Router,
    options: &EndpointOptions,
    connections: &Arc<Semaphore>,
    closing: &CancellationToken,
) {
    let tls = options.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    let handshake_timeout = options.header_read_timeout;
    loop {
        let Ok(permit) = connections.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::warn!("the HTTP endpoint cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let closer = ConnectionCloser(CancellationToken::new());
        let close = closer.0.clone();
        let service = hyper_util::service::TowerToHyperService::new(
            tower_http::add_extension::AddExtension::new(router.clone(), closer),
        );
        let (http, tls, closing) = (http.clone(), tls.clone(), closing.clone());
        tokio::spawn(async move {
            let _permit = permit;
            // Dropping the connection when asked closes it, however stuck
            // its writes are.
            let served = match tls {
                None => {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let connection = http.serve_connection(io, service);
                    until_closed!(connection, close, closing)
                }
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let connection = http.serve_connection(io, service);
                            until_closed!(connection, close, closing)
                        }
                        Ok(Err(e)) => {
                            tracing::debug!("TLS handshake with {peer} failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake with {peer} timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!("HTTP connection with {peer} ended: {e}");
            }
        });
    }
}

/// Serves a hyper connection until it ends; cut at once when `close` fires
/// (a watcher that fell behind), shut down gracefully when `closing` does:
/// the response under way is finished, then the connection closes.
macro_rules! until_closed {
    ($connection:ident, $close:ident, $closing:ident) => {{
        let mut connection = std::pin::pin!($connection);
        tokio::select! {
            served = connection.as_mut() => served,
            _ = $close.cancelled() => Ok(()),
            _ = $closing.cancelled() => {
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    served = connection.as_mut() => served,
                    _ = $close.cancelled() => Ok(()),
                }
            }
        }
    }};
}
use until_closed;

/// Closes the connection a request came on: how a watcher that fell
/// behind is cut off even when it stopped reading.
#[derive(Clone)]
struct ConnectionCloser(CancellationToken);

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

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("the app or channel in the path is not valid: {e}"),
            "bad-request",
        )
    }
}

/// The `case` for a refusal that carries none of its own.
fn case_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad-request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::REQUEST_TIMEOUT => "request-timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-message-format",
        StatusCode::SERVICE_UNAVAILABLE => "service-unavailable",
        s if s.is_server_error() => "unexpected-error",
        _ => "refused",
    }
}

/// The safety net: a refusal made by something other than our handlers
/// (a layer, a rejection we did not map) is rewritten as JSON, keeping its
/// status, its other headers and its text as the `error`.
async fn errors_as_json(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match http_body_util::Limited::new(body, 64 * 1024)
        .collect()
        .await
    {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes())
            .trim()
            .to_string(),
        Err(_) => String::new(),
    };
    let error = match text.is_empty() {
        true => status.canonical_reason().unwrap_or("refused").to_string(),
        false => text,
    };
    parts.headers.remove(CONTENT_TYPE);
    parts.headers.remove(CONTENT_LENGTH);
    let mut answer = ApiError(status, error, case_for(status)).into_response();
    answer.headers_mut().extend(parts.headers);
    answer
}

/// A handler that panicked (a bug) answers 500 instead of dropping the
/// connection.
fn answer_for_panic(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("the HTTP endpoint failed on a request (a bug)");
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the endpoint failed on this request; the provider's log says more".into(),
        "unexpected-error",
    )
    .into_response()
}

/// Checks the request's token and records who is calling; a missing or
/// wrong token is refused here, before routing, so every route needs one.
async fn authenticate(State(shared): State<Shared>, mut request: Request, next: Next) -> Response {
    match shared
        .options
        .tokens
        .authenticate(request.headers().get(AUTHORIZATION))
    {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refusal) => unauthorized(refusal),
    }
}

/// 401 with the `WWW-Authenticate` challenge of RFC 6750.
fn unauthorized(refusal: Refusal) -> Response {
    let (error, challenge) = match refusal {
        Refusal::Missing => (
            "this endpoint requires an API token: send `Authorization: Bearer <token>`",
            "Bearer",
        ),
        Refusal::Malformed => (
            "the Authorization header is not `Bearer <token>`",
            r#"Bearer error="invalid_request""#,
        ),
        Refusal::Invalid => (
            "the API token is not valid for this endpoint",
            r#"Bearer error="invalid_token""#,
        ),
    };
    (
        [(WWW_AUTHENTICATE, HeaderValue::from_static(challenge))],
        ApiError(StatusCode::UNAUTHORIZED, error.into(), "unauthorized"),
    )
        .into_response()
}

async fn no_such_route(uri: Uri) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!(
            "no route `{}`: the endpoint serves {CHANNEL_ROUTE}, {METRICS_ROUTE}, {HEALTH_ROUTE} and {READY_ROUTE}",
            uri.path()
        ),
        "not-found",
    )
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed here: POST publishes an event, GET watches the channel"),
        "method-not-allowed",
    )
}

/// The app, if `caller` may reach it and it is loaded. A token of another
/// app is refused before the lookup, so it learns nothing of which apps run.
fn find_app(shared: &Shared, caller: &Caller, name: &str) -> Result<Arc<AppRuntime>, ApiError> {
    if !caller.may_reach(name) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("the API token does not give access to app `{name}`"),
            "forbidden",
        ));
    }
    let loaded = shared.loaded.load();
    loaded.apps().get(name).cloned().ok_or_else(|| {
        let known: Vec<&str> = match caller {
            Caller::App(own) => vec![own.as_str()],
            _ => loaded.apps().keys().map(String::as_str).collect(),
        };
        ApiError(
            StatusCode::NOT_FOUND,
            format!("no app `{name}` is loaded (loaded: {})", known.join(", ")),
            "app-not-found",
        )
    })
}

/// Reads a request body within the size bound and the body read timeout.
async fn read_body(shared: &Shared, headers: &HeaderMap, body: Body) -> Result<Bytes, Response> {
    let limit = shared.options.max_body_bytes;
    let too_large = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than the endpoint takes ({limit} bytes)"),
            "payload-too-large",
        )
    };
    // Refused before reading, when the client says how much is coming.
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(closing(too_large()));
    }
    let timeout = shared.options.body_read_timeout;
    let collect = http_body_util::Limited::new(body, limit).collect();
    match tokio::time::timeout(timeout, collect).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(closing(too_large())),
        Ok(Err(e)) => Err(closing(ApiError(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {e}"),
            "bad-request",
        ))),
        Err(_) => Err(closing(ApiError(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {}",
                humantime::format_duration(timeout)
            ),
            "request-timeout",
        ))),
    }
}

/// An answer after which the connection closes: the rest of the body, if
/// any, is not read.
fn closing(error: ApiError) -> Response {
    ([(CONNECTION, HeaderValue::from_static("close"))], error).into_response()
}

async fn publish(
    State(shared): State<Shared>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> Result<Response, Response> {
    let Path((app, channel)) = path.map_err(|e| ApiError::from(e).into_response())?;
    if shared.stopping.is_cancelled() {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the provider is stopping and takes no new events".into(),
            "service-unavailable",
        )
        .into_response());
    }
    let app = find_app(&shared, &caller, &app).map_err(IntoResponse::into_response)?;
    let (parts, body) = request.into_parts();
    let body = read_body(&shared, &parts.headers, body).await?;
    let event = cloudevents::http::decode(&parts.headers, &body).map_err(|e| {
        ApiError(StatusCode::BAD_REQUEST, e, "unsupported-message-format").into_response()
    })?;
    let id = event.id.clone();
    app.publish_external(&channel, event)
        .await
        .map_err(|e| ApiError::from(e).into_response())?;
    let body = serde_json::json!({ "app": app.app.name, "channel": channel, "id": id });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

async fn watch(
    State(shared): State<Shared>,
    Extension(caller): Extension<Caller>,
    closer: Option<Extension<ConnectionCloser>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Path((app, channel)) = path?;
    let app = find_app(&shared, &caller, &app)?;
    let max = shared.options.max_watchers;
    let slot = shared.watchers.clone().try_acquire_owned().map_err(|_| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{max} watches are open, as many as this endpoint serves at once: close one or try again later"),
            "too-many-watchers",
        )
    })?;
    let subscription = app.watch(&channel).await?;
    let (sender, backlog) = tokio::sync::mpsc::channel(WATCH_BACKLOG_EVENTS);
    let watch = Watch {
        what: format!("`{channel}` of app `{}`", app.app.name),
        sender,
        queued: Arc::new(AtomicUsize::new(0)),
        closer: closer.map(|Extension(closer)| closer),
        closing: shared.closing.clone(),
    };
    let queued = watch.queued.clone();
    tokio::spawn(watch.pump(subscription));
    // A first comment tells the client the subscription is in place.
    let opened = futures::stream::once(async {
        Ok::<_, Infallible>(SseEvent::default().comment("subscribed"))
    });
    // The slot is held as long as the stream is: until the watcher leaves.
    let events = futures::stream::unfold(
        (backlog, queued, slot),
        |(mut backlog, queued, slot)| async move {
            let (event, size) = backlog.recv().await?;
            queued.fetch_sub(size, Ordering::Relaxed);
            Some((Ok::<_, Infallible>(event), (backlog, queued, slot)))
        },
    );
    let mut response = Sse::new(futures::StreamExt::chain(opened, events))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // Labelled: clients that follow HTTP's old default (`requests`) would
    // read an unlabelled text stream as ISO-8859-1.
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    Ok(response)
}

/// One watch's feed: events go from the subscription into a bounded
/// backlog that the response stream drains.
struct Watch {
    what: String,
    sender: tokio::sync::mpsc::Sender<(SseEvent, usize)>,
    /// Bytes in the backlog.
    queued: Arc<AtomicUsize>,
    closer: Option<ConnectionCloser>,
    /// The endpoint is closing: the watch ends once nothing more is ready.
    closing: CancellationToken,
}

impl Watch {
    /// Takes every event the subscription delivers at once, so that the
    /// channel's publishers never wait for a watcher; a watcher past the
    /// backlog's bounds is disconnected. Ends when the watcher leaves, or
    /// when the endpoint closes once every delivery ready has been passed on.
    async fn pump(self, mut subscription: Box<dyn crate::broker::Subscription>) {
        loop {
            let delivery = tokio::select! {
                biased;
                _ = self.sender.closed() => return,
                delivery = subscription.next() => match delivery {
                    Some(delivery) => delivery,
                    None => return,
                },
                _ = self.closing.cancelled() => return,
            };
            let (event, _) = delivery.ack_and_take().await;
            let (sse, size) = sse_event(&event);
            let behind = self.queued.fetch_add(size, Ordering::Relaxed);
            let room = behind == 0 || behind + size <= WATCH_BACKLOG_BYTES;
            let sent = match room {
                true => self.sender.try_send((sse, size)),
                false => Err(tokio::sync::mpsc::error::TrySendError::Full((sse, size))),
            };
            match sent {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(
                        "a watcher of {} fell behind ({} events, {behind} bytes not yet taken): disconnecting it",
                        self.what,
                        WATCH_BACKLOG_EVENTS - self.sender.capacity(),
                    );
                    if let Some(closer) = &self.closer {
                        closer.0.cancel();
                    }
                    return;
                }
            }
        }
    }
}

/// One event as a server-sent event. `data:` is the event in the JSON
/// format, which always carries the real id (escaped as JSON escapes it).
/// `id:` is the event's id when SSE can carry it as it is; an id holding a
/// control character (a line break or NUL would end or spoil the field) gets
/// an empty `id:`, which per the SSE spec resets the client's last event id
/// rather than leaving the previous event's there.
/// Returns it with the size of its document.
fn sse_event(event: &Event) -> (SseEvent, usize) {
    let doc = String::from_utf8_lossy(&json::encode(event)).into_owned();
    let size = doc.len();
    (SseEvent::default().id(sse_id(&event.id)).data(doc), size)
}

/// The event id as SSE's `id:` field may carry it: as it is, or empty.
fn sse_id(id: &str) -> &str {
    match id.chars().any(char::is_control) {
        true => "",
        false => id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes an SSE response writes for one event.
    async fn written(event: SseEvent) -> String {
        let stream = futures::stream::iter([Ok::<_, Infallible>(event)]);
        let body = Sse::new(stream).into_response().into_body();
        let bytes = body.collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn any_id_is_safe_in_sse_and_the_real_one_is_in_data() {
        for id in [
            "a\nb",
            "a\rb",
            "a\r\nb",
            "a\0b",
            "a\x1bb",
            "tab\there",
            "\u{85}",
        ] {
            let mut event = Event::new(id, "urn:s", "t");
            event.data = Some(b"{\n \"multi\":\r\n \"line\"\n}".to_vec());
            event.datacontenttype = Some("application/json".into());
            let text = written(sse_event(&event).0).await;
            let lines: Vec<&str> = text.split(['\n', '\r']).collect();
            assert!(lines.contains(&"id: "), "{id:?}: {text:?}");
            let data: String = lines
                .iter()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect::<Vec<_>>()
                .join("\n");
            let doc: serde_json::Value = serde_json::from_str(&data).unwrap();
            assert_eq!(doc["id"], id, "{text:?}");
            assert_eq!(doc["data"], serde_json::json!({"multi": "line"}));
        }
        let text = written(sse_event(&Event::new("plain-1", "urn:s", "t")).0).await;
        assert!(text.starts_with("id: plain-1\n"), "{text:?}");
    }

    #[tokio::test]
    async fn data_that_is_not_json_or_utf8_never_panics() {
        let mut event = Event::new("x", "urn:s", "t");
        event.data = Some(vec![0, 0xff, b'\n', b'\r']);
        let text = written(sse_event(&event).0).await;
        assert!(text.contains("data_base64"), "{text:?}");
    }
}
