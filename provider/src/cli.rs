//! The `trigger-messaging` command line: `up` runs apps; `publish` and
//! `tail` are clients of a running provider's `--listen` endpoint.

use crate::cloudevents::{self, Event};
use crate::host::{CacheSetting, HostOptions};
use crate::provider::{Provider, ProviderOptions};
use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use futures::StreamExt as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Runs wasi-messaging components and connects their channels to brokers.
#[derive(Parser, Debug)]
#[command(name = "trigger-messaging", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load apps from Spin manifests and run them until Ctrl+C or SIGTERM.
    Up(UpArgs),
    /// Publish one event into an app's channel through a running provider.
    Publish(PublishArgs),
    /// Print the events published on an app's channel, one JSON document per line.
    Tail(TailArgs),
}

/// `trigger-messaging up`.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// An app manifest (spin.toml) or a directory holding one; repeat for several apps.
    #[arg(short = 'f', long = "from", value_name = "MANIFEST")]
    manifests: Vec<PathBuf>,
    /// The runtime config that binds link names to brokers.
    #[arg(long, env = "RUNTIME_CONFIG_FILE", value_name = "FILE")]
    runtime_config_file: Option<PathBuf>,
    /// Serve the HTTP endpoint for `publish` and `tail` on this address.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// How long in-flight handlers may run after a stop is asked for.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_timeout: Duration,
    /// How long one on-receive call may run before it is stopped.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    handler_timeout: Duration,
    /// Compile components every time instead of using the compiled-code cache.
    #[arg(long)]
    disable_cache: bool,
    /// A wasmtime cache config file.
    #[arg(long, value_name = "FILE", conflicts_with = "disable_cache")]
    cache: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct Endpoint {
    /// The `--listen` address of the running provider.
    #[arg(
        long,
        env = "TRIGGER_MESSAGING_URL",
        default_value = "http://127.0.0.1:3030"
    )]
    url: String,
    /// The app.
    app: String,
    /// The channel.
    channel: String,
}

impl Endpoint {
    fn url(&self) -> String {
        format!(
            "{}/v1/apps/{}/channels/{}",
            self.url.trim_end_matches('/'),
            self.app,
            self.channel
        )
    }
}

#[derive(Args, Debug)]
struct PublishArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// CloudEvents `type`.
    #[arg(long = "type", value_name = "TYPE")]
    ty: String,
    /// CloudEvents `source`.
    #[arg(long, default_value = "urn:trigger-messaging:cli")]
    source: String,
    /// CloudEvents `id` (default: a new UUID).
    #[arg(long)]
    id: Option<String>,
    /// The data, as text.
    #[arg(long, conflicts_with = "data_file")]
    data: Option<String>,
    /// The data, read from a file (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    data_file: Option<PathBuf>,
    /// CloudEvents `datacontenttype`.
    #[arg(long)]
    content_type: Option<String>,
    /// CloudEvents `subject`.
    #[arg(long)]
    subject: Option<String>,
    /// CloudEvents `time` (RFC 3339).
    #[arg(long)]
    time: Option<String>,
    /// CloudEvents `dataschema`.
    #[arg(long)]
    dataschema: Option<String>,
    /// An extension attribute, `name=value`; repeatable.
    #[arg(long = "ext", value_name = "NAME=VALUE")]
    extensions: Vec<String>,
    /// Send in structured mode (application/cloudevents+json) instead of binary mode.
    #[arg(long)]
    structured: bool,
}

#[derive(Args, Debug)]
struct TailArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// Exit after this many events.
    #[arg(long, short = 'n')]
    count: Option<usize>,
}

/// Parses arguments, runs the command, and turns errors into exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up(args) => up(args).await,
            Command::Publish(args) => publish(args).await,
            Command::Tail(args) => tail(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

impl UpArgs {
    fn host_options(&self) -> HostOptions {
        HostOptions {
            cache: match (&self.cache, self.disable_cache) {
                (_, true) => CacheSetting::Disabled,
                (Some(file), _) => CacheSetting::File(file.clone()),
                (None, false) => CacheSetting::Default,
            },
            handler_timeout: self.handler_timeout,
            ..HostOptions::default()
        }
    }
}

/// `up`: load, print what was loaded, run until a stop signal, drain, exit.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let options = ProviderOptions {
        manifests: args.manifests.clone(),
        runtime_config: args.runtime_config_file.clone(),
        host: args.host_options(),
    };
    let provider = Provider::load(options).await?;
    print!("{}", provider.summary());
    provider.start().await?;
    let server = match args.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            println!("Listening on http://{}", listener.local_addr()?);
            let app = crate::http::router(&provider);
            Some(tokio::spawn(
                async move { axum::serve(listener, app).await },
            ))
        }
        None => None,
    };
    println!("Ready: press Ctrl+C to stop.");
    stop_signal().await;
    tracing::info!(
        "stopping: no new messages are taken; waiting up to {} for handlers under way",
        humantime::format_duration(args.shutdown_timeout)
    );
    if let Some(server) = server {
        server.abort();
    }
    let report = provider.shutdown(args.shutdown_timeout).await;
    if report.drained {
        tracing::info!("stopped cleanly");
    } else {
        tracing::warn!(
            "stopped with handlers still running after {}; their events were not acknowledged",
            humantime::format_duration(args.shutdown_timeout)
        );
    }
    Ok(())
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("cannot listen for SIGTERM");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let data = match (&args.data, &args.data_file) {
        (Some(text), _) => Some(text.clone().into_bytes()),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
            Some(buf)
        }
        (None, Some(path)) => {
            Some(std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?)
        }
        (None, None) => None,
    };
    let mut event = Event::new(
        args.id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        args.source,
        args.ty,
    );
    event.data = data;
    event.datacontenttype = args.content_type;
    event.subject = args.subject;
    event.time = args.time;
    event.dataschema = args.dataschema;
    for ext in &args.extensions {
        let (name, value) = ext
            .split_once('=')
            .with_context(|| format!("--ext {ext:?}: expected NAME=VALUE"))?;
        event.extensions.push((name.to_string(), value.to_string()));
    }
    event
        .validate()
        .map_err(|e| anyhow::anyhow!("not a valid CloudEvent: {e}"))?;
    let (headers, body) = if args.structured {
        cloudevents::http::encode_structured(&event)
    } else {
        cloudevents::http::encode_binary(&event)
    };
    let response = reqwest::Client::new()
        .post(args.endpoint.url())
        .headers(headers)
        .body(body)
        .send()
        .await
        .with_context(|| {
            format!(
                "cannot reach {}: is `trigger-messaging up --listen` running?",
                args.endpoint.url
            )
        })?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    anyhow::ensure!(status.is_success(), "{status}: {text}");
    println!("{}", event.id);
    Ok(())
}

async fn tail(args: TailArgs) -> anyhow::Result<()> {
    let response = reqwest::Client::new()
        .get(args.endpoint.url())
        .send()
        .await
        .with_context(|| {
            format!(
                "cannot reach {}: is `trigger-messaging up --listen` running?",
                args.endpoint.url
            )
        })?;
    let status = response.status();
    if !status.is_success() {
        anyhow::bail!("{status}: {}", response.text().await.unwrap_or_default());
    }
    let mut body = response.bytes_stream();
    let mut buffer = Vec::new();
    let mut data = String::new();
    let mut printed = 0;
    if args.count == Some(0) {
        return Ok(());
    }
    while let Some(chunk) = body.next().await {
        buffer.extend_from_slice(&chunk?);
        while let Some(pos) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            } else if line == ": subscribed" {
                eprintln!(
                    "watching `{}` of app `{}`",
                    args.endpoint.channel, args.endpoint.app
                );
            } else if line.is_empty() && !data.is_empty() {
                println!("{}", std::mem::take(&mut data));
                printed += 1;
                if args.count == Some(printed) {
                    return Ok(());
                }
            }
        }
    }
    anyhow::bail!("the provider closed the stream")
}
