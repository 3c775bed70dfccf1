//! End-to-end tests: real components (the sample apps and the probe fixture)
//! on a real provider. One binary; one module per layer of the provider.

mod support;

mod amqp;
mod cli;
mod conformance;
mod dispatch;
mod embedded;
mod faults;
mod fuzz;
mod host;
mod http;
mod inbound;
mod instances;
mod isolation;
mod kafka;
mod keyvalue;
mod links;
mod located;
mod manifest;
mod metrics;
mod mqtt;
mod nats;
mod outbound;
mod redis;
mod reload;
mod samples;
mod spin;
mod tls;
mod traces;
mod variables;
