//! The `trigger-messaging` command line: `up` runs apps; `publish` and
//! `tail` are clients of a running provider's `--messaging-listen` endpoint. With no
//! subcommand it is Spin's trigger plugin, launched by `spin up`.

use crate::app::{InstanceReuse, Pick, ReuseSettings};
use crate::broker::LinkRegistry;
use crate::cloudevents::{self, Event};
use crate::host::{CacheSetting, HostOptions};
use crate::http::EndpointOptions;
use crate::http::access::{self, ApiToken, ApiTokens};
use crate::manifest::variables::VariableSource;
use crate::manifest::{LockedAppLocation, RuntimeConfig, load_locked_app_with_links};
use crate::provider::{Follow, OutputOptions, Provider, ProviderOptions, UserPath};
use crate::reload::ReloadTriggers;
use anyhow::Context as _;
use clap::{Args, CommandFactory as _, Parser, Subcommand};
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
    /// Run as Spin's trigger (no subcommand on the command line).
    #[command(skip)]
    SpinLaunch(SpinLaunchArgs),
    /// Load apps from Spin manifests and run them until Ctrl+C or SIGTERM.
    Up(UpArgs),
    /// Publish one event into an app's channel through a running provider.
    Publish(PublishArgs),
    /// Print the events published on an app's channel, one JSON document per line.
    Tail(TailArgs),
    /// Print whether a running provider is ready (every app started, every
    /// link connected) and what is not; exit 1 when it is not.
    Status(StatusArgs),
}

#[derive(Args, Debug)]
struct StatusArgs {
    #[command(flatten)]
    target: Target,
}

/// `trigger-messaging up`.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// An app manifest (spin.toml) or a directory holding one; repeat for several apps.
    #[arg(short = 'f', long = "from", value_name = "MANIFEST")]
    manifests: Vec<PathBuf>,
    /// Reload an app when its spin.toml, a component's wasm file or the
    /// runtime config changes (SIGHUP reloads too, with or without it).
    #[arg(long)]
    watch: bool,
    #[command(flatten)]
    run: RunArgs,
}

/// How `spin up` runs this plugin: no subcommand, the app in the locked app
/// file named by `SPIN_LOCKED_URL`, and Spin's common trigger flags.
#[derive(Parser, Debug)]
#[command(name = "trigger-messaging", override_usage = "spin up [OPTIONS]")]
pub struct SpinLaunchArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Print the options' help and exit (`spin up --help`).
    #[arg(long, hide = true)]
    help_args_only: bool,
    /// Print the flags this trigger takes, as JSON on stderr, and exit.
    #[arg(long, hide = true)]
    launch_metadata_only: bool,
    /// Check the locked app and exit: components are never composed here.
    #[arg(long, hide = true)]
    precompose_only: bool,
}

/// How apps run: the options `up` and `spin up` share. Spin's common
/// trigger options keep Spin's names; our own are named so that no Spin
/// trigger takes them too (`spin up` hands a flag to every trigger that
/// names it), with the short names `up` has always had as aliases.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Spin's runtime config: links (`[messaging_link.<name>]`), key-value
    /// stores (`[key_value_store.<label>]`) and Spin's own settings.
    #[arg(long, env = "RUNTIME_CONFIG_FILE", value_name = "FILE")]
    runtime_config_file: Option<PathBuf>,
    /// A runtime config of links only (`[messaging_link.<name>]`), read by
    /// this trigger alone: for apps with an http component, whose runtime
    /// config Spin's http trigger reads too.
    #[arg(
        long,
        env = "TRIGGER_MESSAGING_RUNTIME_CONFIG_FILE",
        value_name = "FILE"
    )]
    messaging_runtime_config_file: Option<PathBuf>,
    /// Serve the HTTP endpoint for `publish` and `tail` on this address.
    #[arg(
        long = "messaging-listen",
        alias = "listen",
        env = "TRIGGER_MESSAGING_LISTEN",
        value_name = "ADDR"
    )]
    listen: Option<SocketAddr>,
    /// Serve `/metrics`, `/healthz` and `/readyz` alone on this address
    /// too (they are also on `--messaging-listen`); the same token rules apply.
    #[arg(long, env = "TRIGGER_MESSAGING_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// A file holding the API token every `--messaging-listen` request must carry
    /// (or give the token itself in TRIGGER_MESSAGING_API_TOKEN).
    #[arg(long, env = access::TOKEN_FILE_ENV, value_name = "FILE")]
    api_token_file: Option<PathBuf>,
    /// `APP=FILE`: a token, read from FILE, that reaches only APP's channels; repeatable.
    #[arg(long = "app-token-file", value_name = "APP=FILE")]
    app_token_files: Vec<String>,
    /// Serve `--messaging-listen` over https with this certificate chain (PEM).
    #[arg(
        long = "messaging-tls-cert",
        alias = "tls-cert",
        value_name = "FILE",
        requires_all = ["tls_key", "listen"]
    )]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--messaging-tls-cert`.
    #[arg(
        long = "messaging-tls-key",
        alias = "tls-key",
        value_name = "FILE",
        requires_all = ["tls_cert", "listen"]
    )]
    tls_key: Option<PathBuf>,
    /// How long in-flight handlers may run after a stop is asked for.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_timeout: Duration,
    /// How long one on-receive call may run before it is stopped.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    handler_timeout: Duration,
    /// Compile components every time instead of using the compiled-code cache.
    #[arg(long, env = "DISABLE_WASMTIME_CACHE")]
    disable_cache: bool,
    /// A wasmtime cache config file.
    #[arg(
        long,
        env = "WASMTIME_CACHE_FILE",
        value_name = "FILE",
        conflicts_with = "disable_cache"
    )]
    cache: Option<PathBuf>,
    /// Map each instance's memory anew instead of using the pooling allocator.
    #[arg(long)]
    disable_pooling: bool,
    /// How many instances may be alive at once in the process, busy or
    /// warm, shared fairly by the components that are running.
    #[arg(long, env = "SPIN_MAX_INSTANCE_COUNT", default_value_t = crate::host::DEFAULT_MAX_INSTANCES, value_name = "N")]
    max_instances: u32,
    /// Events one instance handles before it is replaced (1: a fresh instance
    /// per event), as a count or a range `A..B` to pick from per instance;
    /// a component's `max_instance_reuse_count` overrides it.
    #[arg(long, value_name = "N|A..B", value_parser = parse_reuse_count)]
    max_instance_reuse_count: Option<Pick<u32>>,
    /// How long an idle instance is kept for the next event (`0` keeps none),
    /// as Spin takes it: seconds, `500ms`, or a range `1s..5s`; a component's
    /// `idle_instance_timeout` overrides it.
    #[arg(long, value_name = "DURATION", value_parser = parse_idle_timeout)]
    idle_instance_timeout: Option<Pick<Duration>>,
    /// Keep using an instance whose handler returned an error (one that
    /// trapped or timed out is never used again); a component's
    /// `reuse_instance_after_error` overrides it.
    #[arg(long)]
    reuse_instance_after_error: bool,
    /// Where components' stdout and stderr files go (default `<state dir>/logs`; "" for none).
    #[arg(short = 'L', long, env = "SPIN_LOG_DIR", value_name = "DIR", value_parser = path_or_empty())]
    log_dir: Option<PathBuf>,
    /// Empty the component log files at start instead of appending.
    #[arg(long)]
    truncate_logs: bool,
    /// The app's state directory (default `.spin/` beside spin.toml; "" for none).
    #[arg(long, value_name = "DIR", value_parser = path_or_empty())]
    state_dir: Option<PathBuf>,
    /// Print only this component's output; repeatable.
    #[arg(long = "follow", value_name = "COMPONENT")]
    follow: Vec<String>,
    /// Print no component output.
    #[arg(short = 'q', long, aliases = ["sh", "shush"], conflicts_with = "follow")]
    quiet: bool,
    /// A variable's value, before `SPIN_VARIABLE_<NAME>` and the default:
    /// `KEY=VALUE`, `KEY=@FILE` (the file's text), or `@FILE.json` /
    /// `@FILE.toml` (a table of them); repeatable, the last one wins.
    #[arg(
        long = "variable",
        value_name = "KEY=VALUE | KEY=@FILE | @FILE.json | @FILE.toml"
    )]
    variables: Vec<VariableSource>,
    /// Set KEY to VALUE in every app's `default` key-value store before it
    /// starts, replacing what is there; repeatable.
    #[arg(long = "key-value", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    key_values: Vec<(String, String)>,
    /// A memory limit in bytes for every instance, below components' own `max_memory`.
    #[arg(long, env = "SPIN_MAX_INSTANCE_MEMORY", value_name = "BYTES", value_parser = parse_instance_memory)]
    max_instance_memory: Option<u64>,
    /// Compile guests with debug info, for gdb or lldb.
    #[arg(long)]
    debug_info: bool,
    /// Spin's: SQL for the default SQLite database. No messaging component
    /// can open a database, so this trigger leaves it to Spin's own.
    #[arg(long = "sqlite", value_name = "STATEMENT | @FILE[:LABEL]")]
    sqlite_statements: Vec<String>,
    /// Spin's: static files writable. Messaging components get no files.
    #[arg(long)]
    allow_transient_write: bool,
    /// Spin's: the experimental wasi:otel interface, which this trigger does not host.
    #[arg(long)]
    experimental_wasi_otel: bool,
}

/// `--key-value`, as Spin parses it: split at the first `=`.
fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE (got {text:?})"))
}

/// `--max-instance-memory`: bytes, within what a wasm32 memory can be.
fn parse_instance_memory(text: &str) -> Result<u64, String> {
    let bytes: u64 = text
        .parse()
        .map_err(|_| format!("expected a number of bytes (got {text:?})"))?;
    if (1 << 20..=4 << 30).contains(&bytes) {
        Ok(bytes)
    } else {
        Err(format!(
            "must be between 1048576 (1 MiB) and 4294967296 (4 GiB) bytes (got {bytes})"
        ))
    }
}

/// `--max-instance-reuse-count`, in Spin's syntax and our range.
fn parse_reuse_count(text: &str) -> Result<Pick<u32>, String> {
    let pick = Pick::parse_count(text)?;
    if pick.within(crate::manifest::REUSE_COUNT_RANGE) {
        Ok(pick)
    } else {
        Err(format!("must be between 1 and 1000000 (got {text})"))
    }
}

/// `--idle-instance-timeout`, in Spin's syntax and our range.
fn parse_idle_timeout(text: &str) -> Result<Pick<Duration>, String> {
    let pick = Pick::parse_duration(text)?;
    if pick.within(crate::manifest::IDLE_TIMEOUT_RANGE) {
        Ok(pick)
    } else {
        Err(format!("must be between 0s and 1h (got {text})"))
    }
}

/// A path where `""` is allowed: Spin's way of saying "none".
fn path_or_empty() -> impl clap::builder::TypedValueParser<Value = PathBuf> {
    use clap::builder::TypedValueParser as _;
    clap::builder::OsStringValueParser::new().map(PathBuf::from)
}

/// A running provider's endpoint, and how to reach it.
#[derive(Args, Debug)]
struct Target {
    /// The `--messaging-listen` (or `--metrics-listen`) address of the
    /// running provider (`https://` when it serves TLS).
    #[arg(
        long,
        env = "TRIGGER_MESSAGING_URL",
        default_value = "http://127.0.0.1:3030"
    )]
    url: String,
    /// A file holding the API token to send (or give the token itself in
    /// TRIGGER_MESSAGING_API_TOKEN).
    #[arg(long, env = access::TOKEN_FILE_ENV, value_name = "FILE")]
    api_token_file: Option<PathBuf>,
    /// CA certificates (PEM) to trust for an https `--url`, besides the system's.
    #[arg(long, env = "TRIGGER_MESSAGING_CA_FILE", value_name = "FILE")]
    ca_file: Option<PathBuf>,
}

/// An app's channel on a running provider.
#[derive(Args, Debug)]
struct Endpoint {
    #[command(flatten)]
    target: Target,
    /// The app.
    app: String,
    /// The channel.
    channel: String,
}

impl Target {
    /// An HTTP client that sends the API token, if one is given, and
    /// trusts `--ca-file` besides the system's roots.
    fn client(&self) -> anyhow::Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder();
        if let Some(token) = ApiToken::configured(self.api_token_file.as_deref())? {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, token.authorization());
            builder = builder.default_headers(headers);
        }
        if let Some(path) = &self.ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the CA file {}", path.display()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{} holds no usable PEM certificate", path.display()))?;
            anyhow::ensure!(
                !certificates.is_empty(),
                "{} holds no PEM certificate",
                path.display()
            );
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        builder.build().context("cannot set up the HTTP client")
    }

    /// What went wrong, from a refusal's status and body, with a hint for
    /// a missing or wrong token.
    fn refusal(status: reqwest::StatusCode, text: &str) -> anyhow::Error {
        match status {
            reqwest::StatusCode::UNAUTHORIZED => anyhow::anyhow!(
                "{status}: {text}\nthe provider requires an API token: set {} or --api-token-file to it",
                access::TOKEN_ENV
            ),
            _ => anyhow::anyhow!("{status}: {text}"),
        }
    }

    /// `path` on the provider.
    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url.trim_end_matches('/'))
    }

    /// Why the provider could not be reached, with a hint.
    fn unreachable(&self) -> String {
        format!(
            "cannot reach {}: is `trigger-messaging up --messaging-listen` running?",
            self.url
        )
    }
}

impl Endpoint {
    fn url(&self) -> String {
        self.target
            .at(&format!("/v1/apps/{}/channels/{}", self.app, self.channel))
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
    let command = if is_spin_launch(std::env::args_os().skip(1)) {
        Command::SpinLaunch(SpinLaunchArgs::parse())
    } else {
        Cli::parse().command
    };
    init_logging();
    raise_open_file_limit();
    // Before the runtime: the OTLP exporter's HTTP client blocks.
    if matches!(command, Command::Up(_) | Command::SpinLaunch(_)) {
        match crate::traces::init_from_env() {
            Ok(true) => tracing::info!("traces are exported over OTLP (OTEL_EXPORTER_OTLP_*)"),
            Ok(false) => {}
            Err(e) => {
                eprintln!("Error: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the tokio runtime");
    let result = runtime.block_on(async {
        match command {
            Command::Up(args) => up(args).await,
            Command::SpinLaunch(args) => spin_launch(args).await,
            Command::Publish(args) => publish(args).await,
            Command::Tail(args) => tail(args).await,
            Command::Status(args) => status(args).await,
        }
    });
    drop(runtime);
    crate::traces::shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard one, as Go's runtime
/// does: every component keeps its two log files open and every link a
/// socket, so a thousand apps need more than the usual soft limit (1,024).
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max
        {
            return;
        }
        let wanted = limit.rlim_max;
        limit.rlim_cur = wanted;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            tracing::debug!("cannot raise the open-file limit to {wanted}");
        }
    }
}

/// Spin runs trigger plugins with no subcommand: with `SPIN_LOCKED_URL` set
/// (`spin up`), or with one of its hidden query flags.
fn is_spin_launch(mut args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    const QUERIES: [&str; 3] = [
        "--help-args-only",
        "--launch-metadata-only",
        "--precompose-only",
    ];
    let first = args.next();
    let subcommand = first.as_ref().and_then(|a| a.to_str()).is_some_and(|a| {
        Cli::command().get_subcommands().any(|c| c.get_name() == a)
            || ["help", "-h", "--help", "-V", "--version"].contains(&a)
    });
    !subcommand
        && (std::env::var_os("SPIN_LOCKED_URL").is_some()
            || first
                .into_iter()
                .chain(args)
                .any(|a| QUERIES.iter().any(|q| a == *q)))
}

/// `RUST_LOG`, or by default our own messages at info; the broker clients'
/// own (which repeat on every reconnect attempt) only from warnings up.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,messaging_provider=info,trigger_messaging=info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

impl RunArgs {
    fn options(&self) -> ProviderOptions {
        let host = HostOptions {
            cache: match (&self.cache, self.disable_cache) {
                (_, true) => CacheSetting::Disabled,
                (Some(file), _) => CacheSetting::File(file.clone()),
                (None, false) => CacheSetting::Default,
            },
            pooling: !self.disable_pooling,
            handler_timeout: self.handler_timeout,
            max_instances: self.max_instances,
            reuse: ReuseSettings {
                max_uses: self.max_instance_reuse_count,
                idle_timeout: self.idle_instance_timeout,
                after_error: self.reuse_instance_after_error.then_some(true),
            }
            .over(&InstanceReuse::default()),
            max_instance_memory: self.max_instance_memory,
            debug_info: self.debug_info,
        };
        let output = OutputOptions {
            follow: match (self.quiet, self.follow.is_empty()) {
                (true, _) => Follow::None,
                (false, true) => Follow::All,
                (false, false) => Follow::Only(self.follow.iter().cloned().collect()),
            },
            log_dir: UserPath::from_arg(self.log_dir.as_deref()),
            state_dir: UserPath::from_arg(self.state_dir.as_deref()),
            truncate: self.truncate_logs,
        };
        ProviderOptions {
            runtime_config: self.runtime_config_file.clone(),
            messaging_runtime_config: self.messaging_runtime_config_file.clone(),
            host,
            output,
            key_values: self.key_values.clone(),
            ..ProviderOptions::default()
        }
    }

    /// Takes in Spin's flags whose work is not a provider option: the
    /// variables' values, and a line for each flag that has nothing to do
    /// here.
    fn apply_process_wide(&self) -> anyhow::Result<()> {
        let mut given = std::collections::HashMap::new();
        for source in &self.variables {
            given.extend(source.read()?);
        }
        crate::manifest::variables::set_given(given);
        if !self.sqlite_statements.is_empty() {
            tracing::info!(
                "--sqlite: no messaging component can open a SQLite database, so the statements are left to Spin's own triggers"
            );
        }
        if self.allow_transient_write {
            tracing::info!("--allow-transient-write: messaging components get no files to write");
        }
        if self.experimental_wasi_otel {
            tracing::info!(
                "--experimental-wasi-otel: this trigger does not host wasi:otel; a component importing it is refused, naming the import"
            );
        }
        Ok(())
    }

    /// The `--messaging-listen` endpoint's tokens and TLS, checked: per-app tokens
    /// name loaded apps, and an address other machines can reach needs a
    /// token. Tokens are never printed; only where they came from is.
    fn endpoint_options(
        &self,
        addr: SocketAddr,
        provider: &Provider,
    ) -> anyhow::Result<EndpointOptions> {
        let all_apps = ApiToken::configured(self.api_token_file.as_deref())?;
        let mut tokens = ApiTokens::all_apps(all_apps.as_ref());
        let mut app_names = Vec::new();
        for given in &self.app_token_files {
            let (app, file) = given
                .split_once('=')
                .filter(|(app, file)| !app.is_empty() && !file.is_empty())
                .with_context(|| format!("--app-token-file {given:?}: expected APP=FILE"))?;
            anyhow::ensure!(
                provider.app(app).is_some(),
                "--app-token-file {given:?}: no app `{app}` is loaded (loaded: {})",
                provider
                    .loaded()
                    .load()
                    .apps()
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            anyhow::ensure!(
                !app_names.contains(&app),
                "--app-token-file gives app `{app}` two tokens"
            );
            app_names.push(app);
            tokens = tokens.with_app(app, &ApiToken::from_file(std::path::Path::new(file))?);
        }
        if !tokens.required() && !addr.ip().is_loopback() {
            anyhow::bail!(
                "refusing to listen on {addr} without an API token: other machines can reach that address, and anyone reaching it could publish into and watch every app's channels. \
                 Set a token in {} or in a file named by --api-token-file (or {}), or listen on a loopback address such as 127.0.0.1:{}",
                access::TOKEN_ENV,
                access::TOKEN_FILE_ENV,
                addr.port()
            );
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::http::tls::server_config(cert, key)?),
            _ => None,
        };
        if tokens.required() {
            let mut from = Vec::new();
            if all_apps.is_some() {
                from.push(match &self.api_token_file {
                    Some(file) => format!("every app's from {}", file.display()),
                    None => format!("every app's from {}", access::TOKEN_ENV),
                });
            }
            if !app_names.is_empty() {
                from.push(format!("own tokens for {}", app_names.join(", ")));
            }
            tracing::info!(
                "the HTTP endpoint requires an API token ({})",
                from.join("; ")
            );
            if tls.is_none() && !addr.ip().is_loopback() {
                tracing::warn!(
                    "the API token travels unencrypted to {addr}: serve https with --messaging-tls-cert and --messaging-tls-key"
                );
            }
        }
        Ok(EndpointOptions {
            tokens,
            tls,
            ..EndpointOptions::default()
        })
    }
}

/// `up`: run the apps of the given manifests.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let options = ProviderOptions {
        manifests: args.manifests.clone(),
        ..args.run.options()
    };
    run(options, &args.run, args.watch).await
}

/// Launched by `spin up`: answer Spin's queries, or run the locked app.
pub async fn spin_launch(args: SpinLaunchArgs) -> anyhow::Result<()> {
    if args.help_args_only {
        SpinLaunchArgs::command()
            .disable_help_flag(true)
            .help_template("{all-args}")
            .print_long_help()?;
        return Ok(());
    }
    if args.launch_metadata_only {
        let all_flags: Vec<serde_json::Value> = SpinLaunchArgs::command()
            .get_arguments()
            .filter(|a| !a.is_positional())
            .map(|a| {
                let mut flag = serde_json::Map::new();
                if let Some(long) = a.get_long() {
                    flag.insert("long".into(), format!("--{long}").into());
                }
                if let Some(short) = a.get_short() {
                    flag.insert("short".into(), format!("-{short}").into());
                }
                flag.into()
            })
            .collect();
        eprintln!("{}", serde_json::json!({ "all_flags": all_flags }));
        return Ok(());
    }
    let env = |name: &str| {
        std::env::var_os(name).with_context(|| {
            format!("{name} is not set: without a subcommand, trigger-messaging is launched by `spin up`; run `trigger-messaging up` yourself")
        })
    };
    let url = env("SPIN_LOCKED_URL")?;
    let url = url.to_string_lossy();
    let lock = url::Url::parse(&url)
        .ok()
        .filter(|u| u.scheme() == "file")
        .and_then(|u| u.to_file_path().ok())
        .with_context(|| format!("SPIN_LOCKED_URL `{url}` is not a file:// URL"))?;
    let locked = LockedAppLocation {
        lock,
        working_dir: PathBuf::from(env("SPIN_WORKING_DIR")?),
        local_app_dir: std::env::var_os("SPIN_LOCAL_APP_DIR").map(PathBuf::from),
    };
    let options = ProviderOptions {
        locked: Some(locked.clone()),
        ..args.run.options()
    };
    if args.precompose_only {
        args.run.apply_process_wide()?;
        let registry = LinkRegistry::default();
        let config = RuntimeConfig::load_files(
            options.runtime_config.as_deref(),
            options.messaging_runtime_config.as_deref(),
            &registry,
        )?;
        load_locked_app_with_links(&locked, &config)?;
        return Ok(());
    }
    run(options, &args.run, false).await
}

/// Loads, prints what was loaded, runs (reloading on SIGHUP, and on file
/// changes with `watch`) until a stop signal, drains, exits.
async fn run(options: ProviderOptions, args: &RunArgs, watch: bool) -> anyhow::Result<()> {
    // Listening from the start: a stop asked for while apps load or start is
    // taken once they have started, instead of killing the process.
    let mut stop = StopSignal::listen()?;
    args.apply_process_wide()?;
    let stage_times = std::env::var_os(crate::stages::STAGE_TIMES_ENV).map(PathBuf::from);
    if stage_times.is_some() {
        crate::stages::enable();
    }
    let provider = Provider::load(options).await?;
    // The endpoint's tokens, TLS and address are checked before any app starts.
    let listening = match args.listen {
        Some(addr) => {
            let options = args.endpoint_options(addr, &provider)?;
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on {addr}"))?;
            Some((listener, options))
        }
        None => None,
    };
    let metrics_listening = match args.metrics_listen {
        Some(addr) => {
            let options = args.endpoint_options(addr, &provider)?;
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on {addr} (--metrics-listen)"))?;
            Some((listener, options))
        }
        None => None,
    };
    print!("{}", provider.summary());
    // Health, readiness and metrics answer while the apps start.
    let metrics_endpoint = match metrics_listening {
        Some((listener, options)) => {
            println!("Metrics on {}", listener.local_addr()?);
            Some(crate::http::Endpoint::start_operations(
                listener, &provider, options,
            )?)
        }
        None => None,
    };
    // Before any app starts: a provider that cannot watch what it was asked
    // to stops before it takes any event.
    let mut reloads = ReloadTriggers::listen(&provider, watch)?;
    provider.start().await?;
    let endpoint = match listening {
        Some((listener, options)) => {
            let scheme = if options.tls.is_some() {
                "https"
            } else {
                "http"
            };
            println!("Listening on {scheme}://{}", listener.local_addr()?);
            Some(crate::http::Endpoint::start_with(
                listener, &provider, options,
            )?)
        }
        None => None,
    };
    match watch {
        true => println!("Ready: press Ctrl+C to stop; watching the app's files for changes."),
        false => println!("Ready: press Ctrl+C to stop."),
    }
    loop {
        tokio::select! {
            _ = stop.recv() => break,
            cause = reloads.next() => reloads.reload(&provider, cause).await,
        }
    }
    tracing::info!(
        "stopping: no new messages are taken; waiting up to {} for handlers under way",
        humantime::format_duration(args.shutdown_timeout)
    );
    if let Some(endpoint) = &endpoint {
        endpoint.stopping();
    }
    let report = provider.shutdown(args.shutdown_timeout).await;
    drop(endpoint);
    drop(metrics_endpoint);
    if let Some(file) = stage_times {
        let times = crate::stages::snapshot().to_string();
        std::fs::write(&file, times).with_context(|| {
            format!(
                "cannot write the stage times to {} ({})",
                file.display(),
                crate::stages::STAGE_TIMES_ENV
            )
        })?;
    }
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

/// Ctrl+C (SIGINT) and SIGTERM, caught from the moment they are listened for.
struct StopSignal {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignal {
    fn listen() -> anyhow::Result<StopSignal> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignal {
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
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
    let response = args
        .endpoint
        .target
        .client()?
        .post(args.endpoint.url())
        .headers(headers)
        .body(body)
        .send()
        .await
        .with_context(|| args.endpoint.target.unreachable())?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(Target::refusal(status, &text));
    }
    println!("{}", event.id);
    Ok(())
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let target = &args.target;
    let response = target
        .client()?
        .get(target.at(crate::http::READY_ROUTE))
        .send()
        .await
        .with_context(|| target.unreachable())?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let readiness: crate::provider::Readiness = match serde_json::from_str(&text) {
        Ok(readiness) => readiness,
        Err(_) => return Err(Target::refusal(status, &text)),
    };
    print!("{}", readiness.for_people(&target.url));
    anyhow::ensure!(readiness.ready, "not ready");
    Ok(())
}

async fn tail(args: TailArgs) -> anyhow::Result<()> {
    let response = args
        .endpoint
        .target
        .client()?
        .get(args.endpoint.url())
        .send()
        .await
        .with_context(|| args.endpoint.target.unreachable())?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        return Err(Target::refusal(status, &text));
    }
    let mut body = response.bytes_stream();
    let mut lines = SseLines::default();
    let mut data = String::new();
    let mut printed = 0;
    if args.count == Some(0) {
        return Ok(());
    }
    while let Some(chunk) = body.next().await {
        for line in lines.push(&chunk?) {
            if let Some(d) = line.strip_prefix("data:") {
                // A document's lines break only where JSON allows
                // whitespace, so joined without breaks it stays one line.
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

/// Splits a server-sent event stream into lines as the SSE spec does:
/// `\r\n`, `\n` and `\r` each end one, even across chunks.
#[derive(Default)]
struct SseLines {
    partial: Vec<u8>,
    after_cr: bool,
}

impl SseLines {
    /// The lines `chunk` completes.
    fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &byte in chunk {
            let after_cr = std::mem::replace(&mut self.after_cr, byte == b'\r');
            match byte {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => {
                    let line = std::mem::take(&mut self.partial);
                    lines.push(String::from_utf8_lossy(&line).into_owned());
                }
                _ => self.partial.push(byte),
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::SseLines;

    #[test]
    fn sse_lines_end_at_cr_lf_and_crlf_across_chunks() {
        let mut lines = SseLines::default();
        let mut all = lines.push(b"id: 1\r");
        all.extend(lines.push(b"\ndata: a\rdata: b\n\n: c"));
        all.extend(lines.push(b"\r\n"));
        assert_eq!(all, ["id: 1", "data: a", "data: b", "", ": c"]);
    }
}
