//! Process and measurement helpers: spawning the provider (or a native
//! relay) as a guarded child process, reading its CPU time and memory from
//! `/proc`, the suite's own CPU time, the guests it needs, and summaries of
//! repeated figures.

use anyhow::{Context as _, bail};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::mpsc;

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the provider package lives in the repository")
        .to_path_buf()
}

/// How many stderr lines of a child are kept, to explain a failure.
const STDERR_TAIL: usize = 40;

/// A child process of the suite (the provider or a native relay), killed if
/// the suite drops it without stopping it (a panic, an error on the way).
pub struct Process {
    name: String,
    child: tokio::process::Child,
    pid: u32,
    started: Instant,
    stdout: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

/// How a wait for `Ready` ended.
pub enum Started {
    /// `Ready` came after this long.
    Ready(Duration),
    /// The process exited first; the lines that say why.
    Refused(String),
}

impl Process {
    /// Spawns `command` with its stdout and stderr read by the suite.
    pub fn spawn(name: &str, mut command: tokio::process::Command) -> anyhow::Result<Process> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {name}: {command:?}"))?;
        let pid = child
            .id()
            .with_context(|| format!("{name} exited at once"))?;
        let (lines, stdout) = mpsc::unbounded_channel();
        if let Some(out) = child.stdout.take() {
            tokio::spawn(async move {
                let mut out = BufReader::new(out).lines();
                while let Ok(Some(line)) = out.next_line().await {
                    let _ = lines.send(line);
                }
            });
        }
        let stderr: Arc<Mutex<VecDeque<String>>> = Arc::default();
        if let Some(err) = child.stderr.take() {
            let tail = stderr.clone();
            tokio::spawn(async move {
                let mut err = BufReader::new(err).lines();
                while let Ok(Some(line)) = err.next_line().await {
                    let mut tail = tail.lock().expect("stderr tail lock");
                    if tail.len() == STDERR_TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            });
        }
        Ok(Process {
            name: name.to_string(),
            child,
            pid,
            started,
            stdout,
            stderr,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The last lines the process wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let tail = self.stderr.lock().expect("stderr tail lock");
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Waits for a stdout line starting with `Ready` (counted from the
    /// spawn), or for the process to exit first (a refusal, with why).
    pub async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<Started> {
        let deadline = tokio::time::Instant::from_std(self.started + limit);
        loop {
            match tokio::time::timeout_at(deadline, self.stdout.recv()).await {
                Ok(Some(line)) if line.starts_with("Ready") => {
                    return Ok(Started::Ready(self.started.elapsed()));
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    let status = self.child.wait().await?;
                    // The stderr reader may still hold the last lines.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return Ok(Started::Refused(format!(
                        "exited ({status}) before Ready: {}",
                        self.stderr_tail()
                    )));
                }
                Err(_) => bail!(
                    "{} did not print Ready within {limit:?}; its stderr ends with:\n{}",
                    self.name,
                    self.stderr_tail()
                ),
            }
        }
    }

    /// Like [`Process::wait_ready`], but an exit before `Ready` is an error.
    pub async fn ready(&mut self, limit: Duration) -> anyhow::Result<Duration> {
        match self.wait_ready(limit).await? {
            Started::Ready(after) => Ok(after),
            Started::Refused(why) => bail!("{} {why}", self.name),
        }
    }

    /// User + system CPU time so far.
    pub fn cpu(&self) -> anyhow::Result<Duration> {
        process_cpu(self.pid)
    }

    /// Peak resident memory (VmHWM), in bytes.
    pub fn peak_rss(&self) -> anyhow::Result<u64> {
        status_bytes(self.pid, "VmHWM:")
    }

    /// Resident memory now (VmRSS), in bytes.
    pub fn rss(&self) -> anyhow::Result<u64> {
        status_bytes(self.pid, "VmRSS:")
    }

    /// Stops the process with SIGTERM and waits for it to exit (SIGKILL
    /// after `limit`); a provider drains and acknowledges on SIGTERM. A
    /// failed exit is reported with the end of its stderr.
    pub async fn stop(mut self, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        signal(self.pid, libc::SIGTERM);
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                eprintln!(
                    "warning: {} did not exit within {limit:?} of SIGTERM; killed",
                    self.name
                );
                self.child.kill().await?;
                self.child.wait().await?
            }
        };
        if !status.success() || std::env::var_os("SUITE_SHOW_STDERR").is_some() {
            // The stderr reader may still hold the last lines.
            tokio::time::sleep(Duration::from_millis(100)).await;
            eprintln!(
                "warning: {} exited with {status}; its stderr ends with:\n{}",
                self.name,
                self.stderr_tail()
            );
        }
        Ok(status)
    }
}

impl Drop for Process {
    /// Kills a process the suite did not stop (it panicked, or failed on
    /// the way), so that no relay outlives the run.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.start_kill();
        }
    }
}

/// Sends `which` to process `pid`.
fn signal(pid: u32, which: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no memory effects; a stale pid only fails.
        unsafe {
            libc::kill(pid, which);
        }
    }
}

/// Clock ticks per second of `/proc/<pid>/stat`'s times.
fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// A process's user + system CPU time, from `/proc/<pid>/stat`.
pub fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // Fields after the command name (which may hold spaces) in parentheses:
    // state is field 3, utime 14 and stime 15.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path} has no `)`"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{path}: field {n} is not a number"))
    };
    Ok(ticks(field(14)? + field(15)?))
}

/// `n` of the kernel's clock ticks as a duration.
fn ticks(n: u64) -> Duration {
    Duration::from_micros(n * 1_000_000 / clock_ticks())
}

/// The whole machine's busy CPU time, all cores together, and how many
/// cores it has (`/proc/stat`): what a relay, the suite and the broker
/// spend between them. Busy is user, nice, system, irq and softirq; idle,
/// iowait and steal (time the hypervisor gave to others) are not.
pub fn machine_busy() -> anyhow::Result<(Duration, usize)> {
    let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let total = stat
        .lines()
        .find(|line| line.starts_with("cpu "))
        .context("/proc/stat has no `cpu` line")?;
    let fields: Vec<u64> = total
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse().unwrap_or(0))
        .collect();
    let busy: u64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| fields.get(i)).sum();
    let cores = stat
        .lines()
        .filter(|line| line.starts_with("cpu") && !line.starts_with("cpu "))
        .count();
    Ok((ticks(busy), cores.max(1)))
}

/// A memory figure of `/proc/<pid>/status` (e.g. `VmHWM:`), in bytes.
pub fn status_bytes(pid: u32, key: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .with_context(|| format!("{path} has no {key}"))?;
    Ok(kib * 1024)
}

/// This process's user + system CPU time (getrusage(RUSAGE_SELF)): what an
/// in-process run costs, its producer and sink included.
pub fn own_cpu() -> Duration {
    // SAFETY: getrusage writes only into the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| {
        u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec).unwrap_or(0)
    };
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// Resets this process's peak resident memory (VmHWM) to what it holds now,
/// so that an in-process run's peak is its own.
pub fn reset_own_peak_rss() {
    // Writing 5 to clear_refs resets the peak (Linux 4.0 and later).
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!(
            "warning: cannot reset the peak RSS (/proc/self/clear_refs: {e}); in-process peaks include earlier runs"
        );
    }
}

/// This process's id, for reading its own `/proc` entries.
pub fn own_pid() -> u32 {
    std::process::id()
}

/// The guests the suite runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guest {
    /// `sample-apps/relay`, built with cargo.
    Rust,
    /// `sample-apps/relay-py`, built with componentize-py.
    Python,
    /// `sample-apps/relay-js`, built with componentize-js.
    JavaScript,
}

impl Guest {
    /// Its name in the tables.
    pub fn name(self) -> &'static str {
        match self {
            Guest::Rust => "Rust",
            Guest::Python => "Python",
            Guest::JavaScript => "JavaScript",
        }
    }

    /// Where its component is built to.
    pub fn wasm(self) -> PathBuf {
        let wasm = repo().join("target/wasm");
        match self {
            Guest::Rust => wasm.join("wasm32-wasip2/release/relay.wasm"),
            Guest::Python => wasm.join("relay-py.wasm"),
            Guest::JavaScript => wasm.join("relay-js.wasm"),
        }
    }

    /// The component, built first if it is missing.
    pub fn built(self) -> anyhow::Result<PathBuf> {
        let wasm = self.wasm();
        if wasm.exists() {
            return Ok(wasm);
        }
        let samples = repo().join("sample-apps");
        let (dir, program, args): (PathBuf, &str, Vec<String>) = match self {
            Guest::Rust => (
                samples.clone(),
                "cargo",
                [
                    "build",
                    "--target",
                    "wasm32-wasip2",
                    "--release",
                    "-p",
                    "relay",
                ]
                .map(String::from)
                .to_vec(),
            ),
            Guest::Python => (
                samples.join("relay-py"),
                "componentize-py",
                vec![
                    "-d".into(),
                    "../wit".into(),
                    "-w".into(),
                    "relay".into(),
                    "componentize".into(),
                    "app".into(),
                    "-o".into(),
                    wasm.display().to_string(),
                ],
            ),
            Guest::JavaScript => (
                samples.join("relay-js"),
                "sh",
                vec![
                    "-c".into(),
                    format!(
                        "{{ [ -d node_modules ] || npm ci --no-audit --no-fund; }} && node build.mjs '{}'",
                        wasm.display()
                    ),
                ],
            ),
        };
        eprintln!(
            "building the {} relay: {program} {} (in {})",
            self.name(),
            args.join(" "),
            dir.display()
        );
        let status = std::process::Command::new(program)
            .args(&args)
            .current_dir(&dir)
            .env("CARGO_BUILD_JOBS", "1")
            .status()
            .with_context(|| {
                format!(
                    "cannot run `{program}` to build the {} relay (is it installed? see sample-apps/{}/README.md)",
                    self.name(),
                    dir.file_name().and_then(|n| n.to_str()).unwrap_or("")
                )
            })?;
        if !status.success() || !wasm.exists() {
            bail!(
                "building the {} relay failed ({status}): run `{program} {}` in {}",
                self.name(),
                args.join(" "),
                dir.display()
            );
        }
        Ok(wasm)
    }
}

/// The median, smallest and largest of repeated figures.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Spread {
    /// The median (the mean of the middle two for an even count).
    pub median: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`; `None` when there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// The `q`-quantile (0..=1) of sorted durations, in milliseconds.
pub fn quantile_ms(sorted: &[Duration], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    Some(sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1e3)
}

/// Bytes in MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A fresh name for one run's addresses, groups and files: a broker never
/// shows one run another's leftovers.
pub fn run_id() -> String {
    format!("r{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}
