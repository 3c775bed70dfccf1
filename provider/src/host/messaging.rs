//! The host side of `wasi:messaging/{types,pub,sub}`: converts between the
//! WIT types and the provider's, and hands each call to the component's
//! [`MessagingCtx`].

use super::State;
use super::bindings::{self, Channel, WitError, WitEvent};
use crate::broker::BrokerError;
use crate::cloudevents::Event;
use async_trait::async_trait;
use wasmtime::component::{HasSelf, Linker};

/// Answers a component's messaging calls; the dispatcher implements it with
/// the component's app, channels and permissions.
#[async_trait]
pub trait MessagingCtx: Send + Sync + 'static {
    /// `pub.publish`.
    async fn publish(&self, channel: Channel, event: Event) -> Result<(), MessagingError>;
    /// `sub.subscribe`: returns the token.
    async fn subscribe(&self, channel: Channel) -> Result<String, MessagingError>;
    /// `sub.unsubscribe`.
    async fn unsubscribe(&self, token: String) -> Result<(), MessagingError>;
}

/// The WIT `messaging-error` cases, as the rest of the provider raises them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // each case is documented in wit/messaging.wit
pub enum MessagingError {
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    #[error("queue or topic not found: {0}")]
    QueueOrTopicNotFound(String),
    #[error("insufficient permissions: {0}")]
    InsufficientPermissions(String),
    #[error("service unavailable: {0}")]
    ServiceUnavailable(String),
    #[error("delivery failed: {0}")]
    DeliveryFailed(String),
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    #[error("unsupported message format: {0}")]
    UnsupportedMessageFormat(String),
    #[error("unexpected error: {0}")]
    UnexpectedError(String),
}

impl MessagingError {
    /// Whether the error says a link is down rather than that the request
    /// was wrong: a handler failing on it is not to be blamed on the guest.
    pub fn is_link_trouble(&self) -> bool {
        matches!(
            self,
            MessagingError::ServiceUnavailable(_) | MessagingError::ConnectionLost(_)
        )
    }

    /// Whether the same request can never succeed (too large, malformed,
    /// not declared, not permitted), so trying it again is pointless.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            MessagingError::PayloadTooLarge(_)
                | MessagingError::UnsupportedMessageFormat(_)
                | MessagingError::QueueOrTopicNotFound(_)
                | MessagingError::InsufficientPermissions(_)
        )
    }

    /// The WIT case name, for logs and test fixtures.
    pub fn case(&self) -> &'static str {
        match self {
            MessagingError::PayloadTooLarge(_) => "payload-too-large",
            MessagingError::QueueOrTopicNotFound(_) => "queue-or-topic-not-found",
            MessagingError::InsufficientPermissions(_) => "insufficient-permissions",
            MessagingError::ServiceUnavailable(_) => "service-unavailable",
            MessagingError::DeliveryFailed(_) => "delivery-failed",
            MessagingError::ConnectionLost(_) => "connection-lost",
            MessagingError::UnsupportedMessageFormat(_) => "unsupported-message-format",
            MessagingError::UnexpectedError(_) => "unexpected-error",
        }
    }
}

impl From<BrokerError> for MessagingError {
    fn from(e: BrokerError) -> Self {
        let text = e.to_string();
        match e {
            BrokerError::Unavailable(_) | BrokerError::TimedOut(_) => {
                MessagingError::ServiceUnavailable(text)
            }
            BrokerError::ConnectionLost(_) => MessagingError::ConnectionLost(text),
            BrokerError::PayloadTooLarge { .. } => MessagingError::PayloadTooLarge(text),
            BrokerError::DeliveryFailed(_) => MessagingError::DeliveryFailed(text),
            BrokerError::Format(_) => MessagingError::UnsupportedMessageFormat(text),
            BrokerError::Other(_) => MessagingError::UnexpectedError(text),
        }
    }
}

impl From<MessagingError> for WitError {
    fn from(e: MessagingError) -> Self {
        match e {
            MessagingError::PayloadTooLarge(s) => WitError::PayloadTooLarge(s),
            MessagingError::QueueOrTopicNotFound(s) => WitError::QueueOrTopicNotFound(s),
            MessagingError::InsufficientPermissions(s) => WitError::InsufficientPermissions(s),
            MessagingError::ServiceUnavailable(s) => WitError::ServiceUnavailable(s),
            MessagingError::DeliveryFailed(s) => WitError::DeliveryFailed(s),
            MessagingError::ConnectionLost(s) => WitError::ConnectionLost(s),
            MessagingError::UnsupportedMessageFormat(s) => WitError::UnsupportedMessageFormat(s),
            MessagingError::UnexpectedError(s) => WitError::UnexpectedError(s),
        }
    }
}

impl From<WitError> for MessagingError {
    fn from(e: WitError) -> Self {
        match e {
            WitError::PayloadTooLarge(s) => MessagingError::PayloadTooLarge(s),
            WitError::QueueOrTopicNotFound(s) => MessagingError::QueueOrTopicNotFound(s),
            WitError::InsufficientPermissions(s) => MessagingError::InsufficientPermissions(s),
            WitError::ServiceUnavailable(s) => MessagingError::ServiceUnavailable(s),
            WitError::DeliveryFailed(s) => MessagingError::DeliveryFailed(s),
            WitError::ConnectionLost(s) => MessagingError::ConnectionLost(s),
            WitError::UnsupportedMessageFormat(s) => MessagingError::UnsupportedMessageFormat(s),
            WitError::UnexpectedError(s) => MessagingError::UnexpectedError(s),
        }
    }
}

impl From<WitEvent> for Event {
    fn from(e: WitEvent) -> Self {
        Event {
            specversion: e.specversion,
            ty: e.ty,
            source: e.source,
            id: e.id,
            data: e.data,
            datacontenttype: e.datacontenttype,
            dataschema: e.dataschema,
            subject: e.subject,
            time: e.time,
            extensions: e.extensions.unwrap_or_default(),
        }
    }
}

/// An event lowered into a guest straight from the provider's [`Event`]:
/// the WIT `event` record with every field borrowed, so that handing an
/// event to `on-receive` (again, for a retry) copies it only into the
/// guest's memory.
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lower)]
#[component(record)]
pub(super) struct EventRef<'a> {
    specversion: &'a str,
    ty: &'a str,
    source: &'a str,
    id: &'a str,
    data: Option<&'a [u8]>,
    datacontenttype: Option<&'a str>,
    dataschema: Option<&'a str>,
    subject: Option<&'a str>,
    time: Option<&'a str>,
    extensions: Option<&'a [(String, String)]>,
}

impl<'a> From<&'a Event> for EventRef<'a> {
    fn from(e: &'a Event) -> Self {
        EventRef {
            specversion: &e.specversion,
            ty: &e.ty,
            source: &e.source,
            id: &e.id,
            data: e.data.as_deref(),
            datacontenttype: e.datacontenttype.as_deref(),
            dataschema: e.dataschema.as_deref(),
            subject: e.subject.as_deref(),
            time: e.time.as_deref(),
            extensions: (!e.extensions.is_empty()).then_some(e.extensions.as_slice()),
        }
    }
}

impl From<Event> for WitEvent {
    fn from(e: Event) -> Self {
        WitEvent {
            specversion: e.specversion,
            ty: e.ty,
            source: e.source,
            id: e.id,
            data: e.data,
            datacontenttype: e.datacontenttype,
            dataschema: e.dataschema,
            subject: e.subject,
            time: e.time,
            extensions: (!e.extensions.is_empty()).then_some(e.extensions),
        }
    }
}

impl State {
    /// Remembers the first time a call of this run found a link down, and
    /// converts the answer for the guest.
    fn answer<T>(&mut self, result: Result<T, MessagingError>) -> Result<T, WitError> {
        if let Err(e) = &result
            && e.is_link_trouble()
            && self.run.link_trouble.is_none()
        {
            self.run.link_trouble = Some(e.to_string());
        }
        result.map_err(Into::into)
    }
}

impl bindings::types::Host for State {}

impl bindings::publish::Host for State {
    async fn publish(&mut self, c: Channel, e: WitEvent) -> wasmtime::Result<Result<(), WitError>> {
        let publishing = crate::stages::start();
        let mut event: Event = e.into();
        if let Some(trace) = &self.run.trace {
            crate::traces::set_context(&mut event, &trace.0, &trace.1);
        }
        let result = self.messaging.publish(c, event).await;
        if let Some(since) = publishing {
            self.run.publishing += since.elapsed();
        }
        Ok(self.answer(result))
    }
}

impl bindings::sub::Host for State {
    async fn subscribe(&mut self, c: Channel) -> wasmtime::Result<Result<String, WitError>> {
        let result = self.messaging.subscribe(c).await;
        Ok(self.answer(result))
    }

    async fn unsubscribe(&mut self, st: String) -> wasmtime::Result<Result<(), WitError>> {
        let result = self.messaging.unsubscribe(st).await;
        Ok(self.answer(result))
    }
}

/// Adds the messaging imports to a linker.
pub(super) fn add_to_linker(linker: &mut Linker<State>) -> anyhow::Result<()> {
    bindings::publish::add_to_linker::<State, HasSelf<State>>(linker, |s| s)?;
    bindings::sub::add_to_linker::<State, HasSelf<State>>(linker, |s| s)?;
    bindings::types::add_to_linker::<State, HasSelf<State>>(linker, |s| s)?;
    Ok(())
}
