//! The suite's command line (see the table at the top of `suite.rs`).
//! Parsed by hand: cargo passes `--bench` to bench targets, and the suite
//! must take what `cargo bench` and `cargo test` pass and nothing else.

use crate::links::Link;
use anyhow::{Context as _, bail};
use std::path::PathBuf;
use std::time::Duration;

/// A section of the suite, in the order they run and print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// Provider relay vs native relay, one row per link, with stage times.
    Relay,
    /// The relay in Rust, Python and JavaScript on the embedded broker.
    Languages,
    /// Time to `Ready` and to the first handled event, cold and warm cache.
    Startup,
    /// Memory and time to `Ready` with many copies of the relay app.
    ManyApps,
    /// Total throughput with 1, 10 and 100 apps in one process.
    Flat,
    /// Resident memory of a provider relaying on JetStream for a while.
    Soak,
    /// This build against an earlier one (`--baseline-bin`), out of process.
    Baseline,
    /// What the metrics add to one event.
    Metrics,
}

impl Section {
    /// Every section, in running order.
    pub const ALL: [Section; 8] = [
        Section::Relay,
        Section::Languages,
        Section::Startup,
        Section::ManyApps,
        Section::Flat,
        Section::Soak,
        Section::Baseline,
        Section::Metrics,
    ];

    /// The name `--sections` takes.
    pub fn name(self) -> &'static str {
        match self {
            Section::Relay => "relay",
            Section::Languages => "languages",
            Section::Startup => "startup",
            Section::ManyApps => "many-apps",
            Section::Flat => "flat",
            Section::Soak => "soak",
            Section::Baseline => "baseline",
            Section::Metrics => "metrics",
        }
    }

    /// The section named `name`.
    fn parse(name: &str) -> anyhow::Result<Section> {
        Section::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .with_context(|| {
                format!(
                    "unknown section `{name}` (known: {})",
                    Section::ALL.map(Section::name).join(", ")
                )
            })
    }
}

/// What to run and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// Small N, one run, short phases.
    pub quick: bool,
    /// The rows of the relay section.
    pub links: Vec<Link>,
    /// The sections to run.
    pub sections: Vec<Section>,
    /// Runs per figure.
    pub runs: usize,
    /// Events per relay run.
    pub events: usize,
    /// The provider measured out of process.
    pub provider_bin: PathBuf,
    /// Extra arguments for `trigger-messaging up`.
    pub provider_args: Vec<String>,
    /// An earlier `trigger-messaging` to compare this build with.
    pub baseline_bin: Option<PathBuf>,
    /// Length of the soak.
    pub soak: Duration,
    /// Where the JSON results go.
    pub json: PathBuf,
    /// The command line, for the report's header.
    pub command_line: String,
}

impl Options {
    /// Reads the arguments after the program name.
    pub fn parse(args: Vec<String>) -> anyhow::Result<Options> {
        let command_line = std::iter::once("suite".to_string())
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        let mut bench = false;
        let mut quick = false;
        let mut links = None;
        let mut sections = None;
        let mut runs = None;
        let mut events = None;
        let mut provider_bin = None;
        let mut provider_args = Vec::new();
        let mut baseline_bin = None;
        let mut soak = None;
        let mut json = None;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) if name.starts_with("--") => {
                    (name.to_string(), Some(value.to_string()))
                }
                _ => (arg.clone(), None),
            };
            let mut value = || -> anyhow::Result<String> {
                match inline.clone() {
                    Some(v) => Ok(v),
                    None => args
                        .next()
                        .with_context(|| format!("`{name}` needs a value")),
                }
            };
            match name.as_str() {
                "--bench" => bench = true,
                "--quick" => quick = true,
                "--links" => {
                    links = Some(
                        value()?
                            .split(',')
                            .filter(|s| !s.is_empty())
                            .map(Link::parse)
                            .collect::<anyhow::Result<Vec<_>>>()?,
                    )
                }
                "--sections" => {
                    sections = Some(
                        value()?
                            .split(',')
                            .filter(|s| !s.is_empty())
                            .map(Section::parse)
                            .collect::<anyhow::Result<Vec<_>>>()?,
                    )
                }
                "--runs" => runs = Some(count("--runs", &value()?)?),
                "--events" => events = Some(count("--events", &value()?)?),
                "--provider-bin" => provider_bin = Some(PathBuf::from(value()?)),
                "--provider-arg" => provider_args.push(value()?),
                "--baseline-bin" => baseline_bin = Some(PathBuf::from(value()?)),
                "--soak" => {
                    soak = Some(Duration::from_secs(
                        count("--soak", &value()?)?.try_into().unwrap_or(u64::MAX),
                    ))
                }
                "--json" => json = Some(PathBuf::from(value()?)),
                // What libtest-style runners may pass; harmless here.
                "--nocapture" | "--show-output" | "--test-threads" => {}
                other => bail!(
                    "unknown argument `{other}`; options: --quick, --links, --sections, --runs, \
                     --events, --provider-bin, --provider-arg, --baseline-bin, --soak, --json (see the top of benches/suite.rs)"
                ),
            }
        }
        // `cargo test` runs bench targets without `--bench`: quick, for CI.
        let quick = quick || !bench;
        let mut sections = sections.unwrap_or_else(|| Section::ALL.to_vec());
        sections.sort_by_key(|s| Section::ALL.iter().position(|x| x == s));
        sections.dedup();
        Ok(Options {
            quick,
            links: links.unwrap_or_else(|| Link::ALL.to_vec()),
            sections,
            runs: runs.unwrap_or(if quick { 1 } else { 3 }),
            events: events.unwrap_or(if quick { 500 } else { 20_000 }),
            provider_bin: provider_bin
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_trigger-messaging"))),
            provider_args,
            baseline_bin,
            soak: soak.unwrap_or(Duration::from_secs(if quick { 10 } else { 600 })),
            json: json.unwrap_or_else(|| crate::measure::repo().join("target/bench/results.json")),
            command_line,
        })
    }

    /// How long a half-load run lasts.
    pub fn half_load_time(&self) -> Duration {
        Duration::from_secs(if self.quick { 1 } else { 5 })
    }

    /// How long a sink waits for the next new event before it reports what is missing.
    pub fn idle_limit(&self) -> Duration {
        Duration::from_secs(if self.quick { 8 } else { 20 })
    }
}

/// A positive count from the command line.
fn count(option: &str, text: &str) -> anyhow::Result<usize> {
    match text.replace('_', "").parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("`{option}` takes a positive whole number, not `{text}`"),
    }
}
