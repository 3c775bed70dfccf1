//! Packaging `trigger-messaging` as a Spin plugin: the `.tar.gz` Spin
//! unpacks into its plugins directory (the executable, named like the plugin,
//! at the top) and the JSON manifest `spin plugins install --file` reads.
//! `spin-plugin.toml` is the one place the plugin's metadata is written.

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::path::{Path, PathBuf};

/// The plugin metadata file, at the top of the repository.
pub const METADATA_FILE: &str = "spin-plugin.toml";

/// The repository this crate lives in.
pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the repository")
        .to_path_buf()
}

/// `spin-plugin.toml`: the plugin's metadata, in the shape Spin plugin
/// authors keep it (`spin pluginify` reads the same keys).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginMetadata {
    /// The plugin name; `spin up` looks for `trigger-<type>`.
    pub name: String,
    /// One line for `spin plugins list`.
    pub description: String,
    /// Where users read more.
    pub homepage: Option<String>,
    /// The plugin's version.
    pub version: String,
    /// The Spin versions it works with, as a semver requirement.
    pub spin_compatibility: String,
    /// An SPDX license expression.
    pub license: String,
    /// The executable to package, relative to the repository.
    pub package: PathBuf,
}

impl PluginMetadata {
    /// Reads and checks `spin-plugin.toml`.
    pub fn read(path: &Path) -> anyhow::Result<PluginMetadata> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
    }
}

/// The plugin manifest (`spin plugins install --file`), as Spin's plugin
/// manifest schema 0.1 defines it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginManifest {
    /// See [`PluginMetadata::name`].
    pub name: String,
    /// See [`PluginMetadata::description`].
    pub description: String,
    /// See [`PluginMetadata::homepage`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub homepage: Option<String>,
    /// See [`PluginMetadata::version`].
    pub version: String,
    /// See [`PluginMetadata::spin_compatibility`].
    pub spin_compatibility: String,
    /// See [`PluginMetadata::license`].
    pub license: String,
    /// One archive per platform.
    pub packages: Vec<Package>,
}

/// One platform's archive.
#[derive(Debug, Serialize)]
pub struct Package {
    /// `linux`, `macos` or `windows`.
    pub os: String,
    /// `amd64` or `aarch64`.
    pub arch: String,
    /// Where Spin gets the archive: an absolute `file://` URL here.
    pub url: String,
    /// The archive's SHA-256, lower-case hex; Spin checks it.
    pub sha256: String,
}

/// What [`package`] wrote.
#[derive(Debug)]
pub struct Packaged {
    /// The `.tar.gz`.
    pub archive: PathBuf,
    /// The JSON plugin manifest.
    pub manifest: PathBuf,
}

/// Spin's names for the platform this runs on.
pub fn platform() -> anyhow::Result<(&'static str, &'static str)> {
    let os = match std::env::consts::OS {
        "linux" => "linux",
        "macos" => "macos",
        "windows" => "windows",
        other => anyhow::bail!("Spin has no plugin packages for the OS `{other}`"),
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "aarch64",
        other => anyhow::bail!("Spin has no plugin packages for the architecture `{other}`"),
    };
    Ok((os, arch))
}

/// Packs `binary` as the plugin `metadata` describes for this platform and
/// writes the archive and the manifest into `out_dir`. The archive is
/// reproducible (fixed owner and times), so repackaging the same binary
/// gives the same sha256 and Spin sees nothing new to install.
pub fn package(
    metadata: &PluginMetadata,
    binary: &Path,
    out_dir: &Path,
) -> anyhow::Result<Packaged> {
    let (os, arch) = platform()?;
    let executable = format!("{}{}", metadata.name, std::env::consts::EXE_SUFFIX);
    let bytes = std::fs::read(binary)
        .with_context(|| format!("cannot read the executable {}", binary.display()))?;
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let out_dir = out_dir.canonicalize()?;

    let archive = out_dir.join(format!(
        "{}-{}-{os}-{arch}.tar.gz",
        metadata.name, metadata.version
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o755);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    let gz = flate2::GzBuilder::new().mtime(0).write(
        std::fs::File::create(&archive)
            .with_context(|| format!("cannot create {}", archive.display()))?,
        flate2::Compression::best(),
    );
    let mut tarball = tar::Builder::new(gz);
    tarball.append_data(&mut header, &executable, bytes.as_slice())?;
    tarball.into_inner()?.finish()?;

    let sha256 = format!("{:x}", sha2::Sha256::digest(std::fs::read(&archive)?));
    let url = url::Url::from_file_path(&archive)
        .map_err(|()| anyhow::anyhow!("{} is not an absolute path", archive.display()))?;
    let manifest = PluginManifest {
        name: metadata.name.clone(),
        description: metadata.description.clone(),
        homepage: metadata.homepage.clone(),
        version: metadata.version.clone(),
        spin_compatibility: metadata.spin_compatibility.clone(),
        license: metadata.license.clone(),
        packages: vec![Package {
            os: os.into(),
            arch: arch.into(),
            url: url.into(),
            sha256,
        }],
    };
    let manifest_path = out_dir.join(format!("{}.json", metadata.name));
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest)?)
        .with_context(|| format!("cannot write {}", manifest_path.display()))?;
    Ok(Packaged {
        archive,
        manifest: manifest_path,
    })
}
