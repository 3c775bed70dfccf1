//! Key-value stores, where components keep a little state between events.
//! The manifest names a store by label (`key_value_stores = ["default"]`);
//! the runtime config binds a label to a backend (`[key_value_store.<label>]`,
//! Spin's table), and `default` needs no binding: an SQLite file in the app's
//! state directory, in the file and schema Spin's own default store uses, so
//! a Spin http component and a messaging component of one app share it.
//!
//! The guest interfaces over these stores are in `host/keyvalue.rs`.

mod redis;
mod sqlite;

use async_trait::async_trait;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The label every app has without configuration.
pub const DEFAULT_STORE: &str = "default";

/// The file of the `default` store in an app's state directory (Spin's name).
pub const DEFAULT_FILE: &str = "sqlite_key_value.db";

/// Why a store operation failed; it reaches the guest as the interface's
/// `other` error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// One labelled store, as the guest interfaces use it. Keys are strings,
/// values bytes.
#[async_trait]
pub trait KeyValueStore: Send + Sync {
    /// The value of `key`, if there is one.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Sets `key` to `value`, replacing what was there.
    async fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Removes `key`; removing a key that is not there is no error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Whether `key` has a value.
    async fn exists(&self, key: &str) -> Result<bool, StoreError>;
    /// Every key.
    async fn keys(&self) -> Result<Vec<String>, StoreError>;
    /// The values of `keys`, in their order, `None` where there is none.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError>;
    /// Sets every pair.
    async fn set_many(&self, pairs: &[(String, Vec<u8>)]) -> Result<(), StoreError>;
    /// Removes every key.
    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError>;
    /// Adds `delta` to the counter at `key` (0 when absent) atomically and
    /// returns the new value. How a counter is stored is the backend's
    /// (as in Spin: 8 bytes little-endian in SQLite, decimal text in Redis).
    async fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError>;
    /// Sets `key` to `new` only if it still holds `current` (`None`: no
    /// value); `false` when it did not.
    async fn swap(&self, key: &str, current: Option<&[u8]>, new: &[u8])
    -> Result<bool, StoreError>;
}

/// How the runtime config binds a label (`[key_value_store.<label>]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreConfig {
    /// `type = "spin"`: an SQLite file (`path`, relative to the runtime
    /// config), or memory when there is no path.
    Sqlite {
        /// The database file; `None` keeps the store in memory.
        path: Option<PathBuf>,
    },
    /// `type = "redis"`: keys stored as they are, as Spin does.
    Redis {
        /// `redis://` or `rediss://`.
        url: String,
    },
    /// A store type Spin knows but this provider cannot open (e.g.
    /// `azure_cosmos`): fine while no messaging component uses the label.
    Unsupported {
        /// The `type` given.
        store_type: String,
    },
}

impl StoreConfig {
    /// The `default` store of an app whose state lives in `state_dir`
    /// (memory when it has none).
    pub fn default_for(state_dir: Option<&Path>) -> StoreConfig {
        StoreConfig::Sqlite {
            path: state_dir.map(|d| d.join(DEFAULT_FILE)),
        }
    }

    /// For people: where the data is.
    pub fn describe(&self) -> String {
        match self {
            StoreConfig::Sqlite { path: Some(p) } => format!("SQLite {}", p.display()),
            StoreConfig::Sqlite { path: None } => "in memory (gone when the process ends)".into(),
            StoreConfig::Redis { url } => format!("Redis {}", crate::broker::redact_url(url)),
            StoreConfig::Unsupported { store_type } => format!("`{store_type}` (not supported)"),
        }
    }
}

/// Opens stores, one SQLite connection per file however many labels (and
/// apps) share it.
#[derive(Default)]
pub struct Stores {
    databases: Mutex<HashMap<PathBuf, Arc<sqlite::Database>>>,
}

impl Stores {
    /// The store bound to `label` as `config` says. SQLite files (and their
    /// directories) are created here, so a path that cannot be written
    /// stops the start; Redis connects on first use.
    pub fn open(
        &self,
        label: &str,
        config: &StoreConfig,
    ) -> anyhow::Result<Arc<dyn KeyValueStore>> {
        Ok(match config {
            StoreConfig::Sqlite { path: None } => Arc::new(sqlite::SqliteStore::new(
                sqlite::Database::in_memory()?,
                label,
            )),
            StoreConfig::Sqlite { path: Some(path) } => {
                let mut databases = self.databases.lock().unwrap_or_else(|e| e.into_inner());
                let db = match databases.get(path) {
                    Some(db) => db.clone(),
                    None => {
                        let db = sqlite::Database::open(path)?;
                        databases.insert(path.clone(), db.clone());
                        db
                    }
                };
                Arc::new(sqlite::SqliteStore::new(db, label))
            }
            StoreConfig::Redis { url } => Arc::new(redis::RedisStore::new(url)?),
            StoreConfig::Unsupported { store_type } => anyhow::bail!(
                "key-value store `{label}` has type `{store_type}`, which trigger-messaging cannot open (it opens `spin` and `redis` stores)"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules every backend keeps; the Redis ones run in tests/all.
    pub(crate) async fn behaves_as_a_store(store: &dyn KeyValueStore) {
        assert_eq!(store.get("a").await.unwrap(), None);
        assert!(!store.exists("a").await.unwrap());
        store.set("a", b"1").await.unwrap();
        store.set("a", b"2").await.unwrap();
        assert_eq!(store.get("a").await.unwrap().as_deref(), Some(&b"2"[..]));
        assert!(store.exists("a").await.unwrap());
        store.delete("a").await.unwrap();
        store.delete("a").await.unwrap();
        assert_eq!(store.get("a").await.unwrap(), None);

        let pairs = vec![("x".to_string(), b"1".to_vec()), ("y".into(), Vec::new())];
        store.set_many(&pairs).await.unwrap();
        let got = store
            .get_many(&["y".into(), "nope".into(), "x".into()])
            .await
            .unwrap();
        assert_eq!(got, [Some(Vec::new()), None, Some(b"1".to_vec())]);
        let mut keys = store.keys().await.unwrap();
        keys.sort();
        assert_eq!(keys, ["x", "y"]);
        store.delete_many(&["x".into(), "y".into()]).await.unwrap();
        assert!(store.keys().await.unwrap().is_empty());

        assert_eq!(store.increment("n", 5).await.unwrap(), 5);
        assert_eq!(store.increment("n", -7).await.unwrap(), -2);
        store.set("text", b"not a counter").await.unwrap();
        assert!(store.increment("text", 1).await.is_err());
        store.set("max", &i64::MAX.to_le_bytes()).await.unwrap();

        assert!(store.swap("s", None, b"first").await.unwrap());
        assert!(
            !store.swap("s", None, b"again").await.unwrap(),
            "not absent now"
        );
        assert!(!store.swap("s", Some(b"stale"), b"x").await.unwrap());
        assert!(store.swap("s", Some(b"first"), b"second").await.unwrap());
        assert_eq!(
            store.get("s").await.unwrap().as_deref(),
            Some(&b"second"[..])
        );
    }

    #[tokio::test]
    async fn sqlite_in_memory_and_on_disk() {
        let stores = Stores::default();
        let memory = stores
            .open("default", &StoreConfig::Sqlite { path: None })
            .unwrap();
        behaves_as_a_store(memory.as_ref()).await;
        assert!(memory.increment("max", 1).await.is_err(), "overflow");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deeper").join(DEFAULT_FILE);
        let config = StoreConfig::Sqlite {
            path: Some(path.clone()),
        };
        let a = stores.open("a", &config).unwrap();
        let b = stores.open("b", &config).unwrap();
        behaves_as_a_store(a.as_ref()).await;
        a.set("shared", b"a's").await.unwrap();
        assert_eq!(b.get("shared").await.unwrap(), None, "labels are apart");
        drop((a, b, stores));
        let again = Stores::default().open("a", &config).unwrap();
        assert_eq!(
            again.get("shared").await.unwrap().as_deref(),
            Some(&b"a's"[..]),
            "kept on disk"
        );
    }
}
