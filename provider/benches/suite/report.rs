//! What the suite prints and writes: a header naming the machine, the date
//! and the command line; a markdown table per section, printed as each
//! section ends; and every figure as JSON, written after each section so
//! that a long run that stops early keeps what it measured.

use crate::measure::Spread;
use crate::options::Options;
use anyhow::Context as _;
use serde_json::{Value, json};
use std::path::PathBuf;

/// The report under way.
pub struct Report {
    json: PathBuf,
    document: serde_json::Map<String, Value>,
}

impl Report {
    /// Prints the header and starts the JSON document.
    pub fn start(options: &Options) -> Report {
        let machine = machine();
        let date = now_utc();
        println!("# trigger-messaging benchmark suite\n");
        println!(
            "- machine: {} cores ({}), {:.1} GiB memory, Linux {}",
            machine["nproc"],
            machine["cpu"].as_str().unwrap_or("unknown CPU"),
            machine["memory_gib"].as_f64().unwrap_or(0.0),
            machine["kernel"].as_str().unwrap_or("?"),
        );
        println!("- date: {date}");
        println!("- command: `{}`", options.command_line);
        println!(
            "- mode: {}; {} run(s) per figure, {} events per relay run; figures are median (min–max) over the runs",
            if options.quick { "quick" } else { "full" },
            options.runs,
            options.events
        );
        println!(
            "- provider: {} out of process; in process (the embedded rows, languages, flat): the library this suite was built with",
            options.provider_bin.display()
        );
        if !options.provider_args.is_empty() {
            println!("- provider arguments: {}", options.provider_args.join(" "));
        }
        println!();
        let mut document = serde_json::Map::new();
        document.insert("machine".into(), machine);
        document.insert("date".into(), date.into());
        document.insert("command".into(), options.command_line.clone().into());
        document.insert(
            "options".into(),
            json!({
                "quick": options.quick,
                "runs": options.runs,
                "events": options.events,
                "links": options.links.iter().map(|l| l.name()).collect::<Vec<_>>(),
                "sections": options.sections.iter().map(|s| s.name()).collect::<Vec<_>>(),
                "provider_bin": options.provider_bin.display().to_string(),
                "provider_args": options.provider_args,
                "soak_seconds": options.soak.as_secs(),
            }),
        );
        document.insert("sections".into(), Value::Object(Default::default()));
        Report {
            json: options.json.clone(),
            document,
        }
    }

    /// Prints a section's tables and keeps its figures.
    pub fn section(&mut self, name: &str, tables: &[Table], figures: Value) -> anyhow::Result<()> {
        for table in tables {
            println!("{}", table.render());
        }
        if let Some(Value::Object(sections)) = self.document.get_mut("sections") {
            sections.insert(name.into(), figures);
        }
        self.write()
    }

    /// Writes the JSON document as it stands.
    pub fn write(&self) -> anyhow::Result<()> {
        if let Some(dir) = self.json.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(&Value::Object(self.document.clone()))?;
        std::fs::write(&self.json, text)
            .with_context(|| format!("cannot write {}", self.json.display()))
    }

    /// Where the JSON goes.
    pub fn json_path(&self) -> &std::path::Path {
        &self.json
    }
}

/// A markdown table with a title and notes under it.
pub struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

impl Table {
    /// An empty table.
    pub fn new(title: &str, header: &[&str]) -> Table {
        Table {
            title: title.into(),
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Adds a note printed under the table.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// The table in markdown.
    pub fn render(&self) -> String {
        let mut out = format!("## {}\n\n", self.title);
        out += &format!("| {} |\n", self.header.join(" | "));
        out += &format!("|{}\n", "---|".repeat(self.header.len()));
        for row in &self.rows {
            out += &format!("| {} |\n", row.join(" | "));
        }
        for note in &self.notes {
            out += &format!("\n{note}\n");
        }
        out
    }
}

/// `median (min–max)` with `decimals` places; just the median for one run;
/// `n/a` when nothing was measured.
pub fn spread(s: Option<Spread>, decimals: usize) -> String {
    match s {
        None => "n/a".into(),
        Some(s) if s.min == s.max => number(s.median, decimals),
        Some(s) => format!(
            "{} ({}–{})",
            number(s.median, decimals),
            number(s.min, decimals),
            number(s.max, decimals)
        ),
    }
}

/// A number with thousands separated by commas when it has no decimals.
pub fn number(x: f64, decimals: usize) -> String {
    if decimals > 0 {
        return format!("{x:.decimals$}");
    }
    let whole = format!("{:.0}", x);
    let (sign, digits) = whole
        .strip_prefix('-')
        .map_or(("", whole.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// A spread as JSON (`null` when nothing was measured).
pub fn spread_json(s: Option<Spread>) -> Value {
    s.map_or(Value::Null, |s| json!(s))
}

/// The machine: cores, CPU model, memory, kernel.
fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .ok();
    json!({
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": cpu,
        "memory_gib": memory_kib.map(|k| k as f64 / (1024.0 * 1024.0)),
        "kernel": kernel,
    })
}

/// Now, in RFC 3339 (UTC).
fn now_utc() -> String {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    chrono::DateTime::from_timestamp(since_epoch.as_secs() as i64, 0).map_or_else(
        || "unknown".into(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}
