//! What asks a running provider to reload: SIGHUP, and with `up --watch`
//! a change to a file it was loaded from (a manifest, a component's wasm
//! file, a runtime config). A failed reload is logged once per cause: the
//! running version stays, and the same broken file is not reported again
//! at every save.

use crate::provider::Provider;
use notify::{EventKind, RecursiveMode, Watcher as _};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

/// Changes closer together than this are one reload (a build writes a file
/// in steps, an editor saves by writing a new file and renaming it).
const QUIET: Duration = Duration::from_millis(300);

/// A reload is not put off longer than this by changes that keep coming.
const AT_MOST: Duration = Duration::from_secs(3);

/// SIGHUP and, when watching, file changes; see the module docs.
pub struct ReloadTriggers {
    hangup: Signal,
    watch: Option<FileWatch>,
    /// The last failure reported, so that it is reported once.
    last_failure: Option<String>,
}

/// Why a reload was asked for.
pub enum Cause {
    /// SIGHUP.
    Hangup,
    /// These watched files changed.
    Changed(Vec<PathBuf>),
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Hangup => f.write_str("SIGHUP"),
            Cause::Changed(files) => {
                let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
                write!(f, "changed: {}", names.join(", "))
            }
        }
    }
}

/// The files a provider was loaded from, watched through their directories.
struct FileWatch {
    watcher: notify::RecommendedWatcher,
    changes: mpsc::UnboundedReceiver<PathBuf>,
    files: BTreeSet<PathBuf>,
    dirs: BTreeSet<PathBuf>,
}

impl ReloadTriggers {
    /// Listens for SIGHUP and, with `watch`, for changes to the files
    /// `provider` was loaded from.
    pub fn listen(provider: &Provider, watch: bool) -> anyhow::Result<ReloadTriggers> {
        use anyhow::Context as _;
        let hangup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
        let watch = match watch {
            true => Some(FileWatch::new(provider).context(
                "--watch: cannot watch the app's files (on Linux, fs.inotify.max_user_instances \
                 bounds the watchers a user may have)",
            )?),
            false => None,
        };
        Ok(ReloadTriggers {
            hangup,
            watch,
            last_failure: None,
        })
    }

    /// Waits for the next reason to reload.
    pub async fn next(&mut self) -> Cause {
        let watch = async {
            match &mut self.watch {
                Some(watch) => watch.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.hangup.recv() => Cause::Hangup,
            changed = watch => Cause::Changed(changed),
        }
    }

    /// Reloads `provider` and says what came of it: what changed, or why
    /// nothing did (once per distinct failure).
    pub async fn reload(&mut self, provider: &Provider, cause: Cause) {
        match provider.reload().await {
            Ok(report) => {
                self.last_failure = None;
                match (&cause, report.is_empty()) {
                    _ if !report.failed.is_empty() => {
                        tracing::error!("reloaded ({cause}), not wholly: {report}")
                    }
                    (Cause::Changed(_), true) => {
                        tracing::debug!("reload ({cause}): {report}")
                    }
                    _ => tracing::info!("reloaded ({cause}): {report}"),
                }
                if let Some(watch) = &mut self.watch {
                    watch.follow(provider);
                }
            }
            Err(e) => {
                let why = format!("{e:#}");
                if self.last_failure.as_ref() != Some(&why) {
                    tracing::error!(
                        "reload ({cause}) failed; the running version stays as it was: {why}"
                    );
                    self.last_failure = Some(why);
                }
            }
        }
    }
}

impl FileWatch {
    fn new(provider: &Provider) -> anyhow::Result<FileWatch> {
        let (tx, changes) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            // Reads (ours included, when a reload reads the files) are not changes.
            if matches!(event.kind, EventKind::Access(_)) {
                return;
            }
            for path in event.paths {
                let _ = tx.send(path);
            }
        })?;
        let mut watch = FileWatch {
            watcher,
            changes,
            files: BTreeSet::new(),
            dirs: BTreeSet::new(),
        };
        watch.follow(provider);
        Ok(watch)
    }

    /// Watches the files `provider` reads now (a reload may add or drop some).
    fn follow(&mut self, provider: &Provider) {
        self.files = provider
            .watched_files()
            .into_iter()
            .filter_map(|f| std::path::absolute(f).ok())
            .collect();
        let dirs: BTreeSet<PathBuf> = self
            .files
            .iter()
            .filter_map(|f| f.parent().map(PathBuf::from))
            .collect();
        for gone in self.dirs.difference(&dirs) {
            let _ = self.watcher.unwatch(gone);
        }
        for dir in dirs.difference(&self.dirs) {
            if let Err(e) = self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(
                    "--watch: cannot watch {} ({e}); changes there are not seen",
                    dir.display()
                );
            }
        }
        self.dirs = dirs;
    }

    /// Waits for a change to a watched file, then for the changes to stop.
    async fn next(&mut self) -> Vec<PathBuf> {
        let mut changed = BTreeSet::new();
        while changed.is_empty() {
            let Some(path) = self.changes.recv().await else {
                return std::future::pending().await;
            };
            if self.files.contains(&path) {
                changed.insert(path);
            }
        }
        let until = tokio::time::Instant::now() + AT_MOST;
        loop {
            let quiet = tokio::time::Instant::now() + QUIET;
            tokio::select! {
                path = self.changes.recv() => match path {
                    Some(path) if self.files.contains(&path) => {
                        changed.insert(path);
                    }
                    Some(_) => {}
                    None => break,
                },
                _ = tokio::time::sleep_until(quiet.min(until)) => break,
            }
            if tokio::time::Instant::now() >= until {
                break;
            }
        }
        changed.into_iter().collect()
    }
}
