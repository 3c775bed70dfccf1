//! Outbound HTTP (`wasi:http/outgoing-handler`, by wasmtime-wasi-http):
//! each request goes out only to the component's `allowed_outbound_hosts`,
//! as in Spin; a refused one fails with `HTTP-request-denied` and is
//! logged with the entry that would allow it. Requests are bounded by
//! what is left of the handler timeout, so a slow server ends in a timeout
//! error the guest can handle before the handler itself is stopped.
//! Redirects are not followed (wasi:http never does): a guest that follows
//! one makes a new request, checked like the first.

use super::grants::Grants;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

/// The hooks of one instance.
pub struct OutboundHttp {
    pub(super) grants: Arc<Grants>,
    /// When the handler timeout ends.
    pub(super) deadline: Instant,
    /// The run's trace context, sent as `traceparent` / `tracestate`.
    pub(super) trace: Option<Arc<(String, String)>>,
}

/// The future `send_request` returns.
type Sent = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Sent {
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("https");
        let host = uri.host().unwrap_or_default();
        if !self.grants.outbound.allows(scheme, host, uri.port_u16()) {
            let destination = match uri.authority() {
                Some(authority) => format!("{scheme}://{authority}"),
                None => format!("{scheme}://"),
            };
            let grants = &self.grants;
            if grants.first_refusal(format!("http {destination}")) {
                tracing::warn!(
                    app = %grants.app, component = %grants.component,
                    "A component tried to make an outbound network connection to disallowed destination '{destination}'. To allow this request, add 'allowed_outbound_hosts = [\"{destination}\"]' to the manifest component section ([component.{}]; allowed now: {})",
                    grants.component, grants.outbound
                );
            }
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let options = within(options.unwrap_or_default(), self.deadline);
        let mut request = request;
        if let Some(trace) = &self.trace {
            let headers = request.headers_mut();
            for (name, value) in [
                (crate::traces::TRACEPARENT, &trace.0),
                (crate::traces::TRACESTATE, &trace.1),
            ] {
                if let Ok(value) = http::HeaderValue::from_str(value)
                    && !value.is_empty()
                {
                    headers.insert(name, value);
                }
            }
        }
        // Allowed: sent as wasmtime-wasi-http sends it, within our limits.
        wasmtime_wasi_http::default_hooks().send_request(request, Some(options), fut)
    }
}

/// The guest's timeouts, none longer than what is left before `deadline`
/// less a tenth (at most a second), so that the guest learns of a timeout
/// in time to do something about it.
fn within(options: RequestOptions, deadline: Instant) -> RequestOptions {
    let left = deadline.saturating_duration_since(Instant::now());
    let left = left
        .saturating_sub((left / 10).min(Duration::from_secs(1)))
        .max(Duration::from_millis(1));
    let cap = |t: Option<Duration>| Some(t.map_or(left, |t| t.min(left)));
    RequestOptions {
        connect_timeout: cap(options.connect_timeout),
        first_byte_timeout: cap(options.first_byte_timeout),
        between_bytes_timeout: cap(options.between_bytes_timeout),
    }
}
