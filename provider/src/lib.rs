//! A wasi-messaging provider: runs WebAssembly components that import
//! `wasi:messaging/pub` and `wasi:messaging/sub` and export
//! `wasi:messaging/handler`, and connects the channels their apps declare to
//! message brokers.
//!
//! The layers, each feeding the next:
//! [`manifest`] (spin.toml and runtime config) → [`app`] (the validated app
//! model) → [`host`] (wasmtime; warm instances reused between events) →
//! [`dispatch`] (deliveries to handlers, retries, dead letters) →
//! [`broker`] (one link per broker behind one trait); [`keyvalue`] holds
//! the stores components keep state in.
#![deny(missing_docs)]

pub mod app;
pub mod broker;
pub mod cli;
pub mod cloudevents;
pub mod config;
pub mod dispatch;
pub mod host;
pub mod http;
pub mod keyvalue;
pub mod manifest;
pub mod metrics;
pub mod provider;
pub mod reload;
pub mod stages;
pub mod timeout;
pub mod traces;

pub use provider::{Provider, ProviderOptions};
