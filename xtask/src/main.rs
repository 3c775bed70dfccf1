//! `cargo xtask package`: builds the release binary and makes the Spin
//! plugin archive and manifest under `target/plugin/`.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::Command;

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build `trigger-messaging` in release mode and package it as a Spin plugin.
    Package {
        /// Package this executable instead of building one.
        #[arg(long, value_name = "FILE")]
        binary: Option<PathBuf>,
        /// Where the archive and the manifest go.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let root = xtask::repository_root();
    match Cli::parse().task {
        Task::Package { binary, out_dir } => {
            let metadata = xtask::PluginMetadata::read(&root.join(xtask::METADATA_FILE))?;
            let binary = match binary {
                Some(binary) => binary,
                None => {
                    let status = Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
                        .current_dir(&root)
                        .args(["build", "--release", "--package", "wasi-messaging-provider"])
                        .args(["--bin", &metadata.name])
                        .status()
                        .context("cannot run cargo")?;
                    anyhow::ensure!(status.success(), "the release build failed");
                    root.join(&metadata.package)
                }
            };
            let out_dir = out_dir.unwrap_or_else(|| root.join("target/plugin"));
            let packaged = xtask::package(&metadata, &binary, &out_dir)?;
            println!("archive:  {}", packaged.archive.display());
            println!("manifest: {}", packaged.manifest.display());
            println!(
                "install:  spin plugins install --file {} --yes",
                packaged.manifest.display()
            );
            Ok(())
        }
    }
}
