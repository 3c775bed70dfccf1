//! Stores in SQLite, in the table Spin's own `spin` key-value stores use
//! (`spin_key_value`: store label, key, value), so a file is shared with a
//! Spin http trigger of the same app. Calls run on tokio's blocking pool.

use super::{KeyValueStore, StoreError};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension as _, params};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Another process (Spin's http trigger on the same file) may hold the
/// write lock for a moment.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// One database file (or an in-memory database) and its connection.
pub struct Database {
    conn: Mutex<Connection>,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(format!("SQLite: {e}"))
    }
}

impl Database {
    /// Opens (creating it and its directories) the file at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Arc<Database>> {
        use anyhow::Context as _;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let conn = Connection::open(path)
            .with_context(|| format!("cannot open the key-value file {}", path.display()))?;
        Self::with(conn).with_context(|| format!("cannot use {}", path.display()))
    }

    /// A database that lives as long as the process.
    pub fn in_memory() -> anyhow::Result<Arc<Database>> {
        Self::with(Connection::open_in_memory()?)
    }

    fn with(conn: Connection) -> anyhow::Result<Arc<Database>> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.execute(
            "CREATE TABLE IF NOT EXISTS spin_key_value (
                store TEXT NOT NULL,
                key   TEXT NOT NULL,
                value BLOB NOT NULL,
                PRIMARY KEY (store, key)
            )",
            [],
        )?;
        Ok(Arc::new(Database {
            conn: Mutex::new(conn),
        }))
    }
}

/// One label's rows of a [`Database`].
pub struct SqliteStore {
    db: Arc<Database>,
    label: Arc<str>,
}

impl SqliteStore {
    pub fn new(db: Arc<Database>, label: &str) -> SqliteStore {
        SqliteStore {
            db,
            label: label.into(),
        }
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &str) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (db, label) = (self.db.clone(), self.label.clone());
        tokio::task::spawn_blocking(move || {
            let mut conn = db.conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut conn, &label)
        })
        .await
        .map_err(|e| StoreError(format!("the key-value call did not finish: {e}")))?
    }
}

const GET: &str = "SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2";
const SET: &str = "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
     ON CONFLICT(store, key) DO UPDATE SET value = ?3";
const DELETE: &str = "DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2";

fn get(conn: &Connection, label: &str, key: &str) -> rusqlite::Result<Option<Vec<u8>>> {
    conn.prepare_cached(GET)?
        .query_row(params![label, key], |row| row.get(0))
        .optional()
}

#[async_trait]
impl KeyValueStore for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_owned();
        self.run(move |conn, label| Ok(get(conn, label, &key)?))
            .await
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let (key, value) = (key.to_owned(), value.to_vec());
        self.run(move |conn, label| {
            conn.prepare_cached(SET)?
                .execute(params![label, key, value])?;
            Ok(())
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_owned();
        self.run(move |conn, label| {
            conn.prepare_cached(DELETE)?.execute(params![label, key])?;
            Ok(())
        })
        .await
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.get(key).await?.is_some())
    }

    async fn keys(&self) -> Result<Vec<String>, StoreError> {
        self.run(|conn, label| {
            let mut query =
                conn.prepare_cached("SELECT key FROM spin_key_value WHERE store = ?1")?;
            let keys = query
                .query_map([label], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(keys)
        })
        .await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let keys = keys.to_vec();
        self.run(move |conn, label| {
            let tx = conn.transaction()?;
            let values = keys
                .iter()
                .map(|k| get(&tx, label, k))
                .collect::<rusqlite::Result<_>>()?;
            tx.commit()?;
            Ok(values)
        })
        .await
    }

    async fn set_many(&self, pairs: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        let pairs = pairs.to_vec();
        self.run(move |conn, label| {
            let tx = conn.transaction()?;
            for (key, value) in &pairs {
                tx.prepare_cached(SET)?
                    .execute(params![label, key, value])?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        let keys = keys.to_vec();
        self.run(move |conn, label| {
            let tx = conn.transaction()?;
            for key in &keys {
                tx.prepare_cached(DELETE)?.execute(params![label, key])?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        let key = key.to_owned();
        self.run(move |conn, label| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let current = match get(&tx, label, &key)? {
                None => 0,
                Some(bytes) => {
                    let bytes: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                        StoreError(format!(
                            "`{key}` holds {} bytes, not a counter (8 bytes, little-endian, as increment writes it)",
                            bytes.len()
                        ))
                    })?;
                    i64::from_le_bytes(bytes)
                }
            };
            let new = current.checked_add(delta).ok_or_else(|| {
                StoreError(format!("`{key}` would overflow: {current} + {delta}"))
            })?;
            tx.prepare_cached(SET)?
                .execute(params![label, key, new.to_le_bytes().to_vec()])?;
            tx.commit()?;
            Ok(new)
        })
        .await
    }

    async fn swap(
        &self,
        key: &str,
        current: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, StoreError> {
        let (key, current, new) = (key.to_owned(), current.map(<[u8]>::to_vec), new.to_vec());
        self.run(move |conn, label| {
            let changed = match current {
                Some(old) => conn
                    .prepare_cached(
                        "UPDATE spin_key_value SET value = ?4 WHERE store = ?1 AND key = ?2 AND value = ?3",
                    )?
                    .execute(params![label, key, old, new])?,
                None => conn
                    .prepare_cached(
                        "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3) ON CONFLICT(store, key) DO NOTHING",
                    )?
                    .execute(params![label, key, new])?,
            };
            Ok(changed == 1)
        })
        .await
    }
}
