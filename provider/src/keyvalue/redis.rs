//! Stores in Redis: keys as they are (as Spin's `redis` stores keep them),
//! counters with INCRBY, compare-and-swap in one server-side script. The
//! connection is made on first use and reconnects on its own, so Redis
//! being down at start stops nothing; calls fail until it is back.

use super::{KeyValueStore, StoreError};
use async_trait::async_trait;
use redis::AsyncCommands as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

/// How long one call may wait for Redis.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Sets KEYS[1] to ARGV[3] if it holds ARGV[2] (ARGV[1] = "1") or holds
/// nothing (ARGV[1] = "0"); 1 when it did.
const SWAP: &str = r"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3])
return 1
";

pub struct RedisStore {
    client: redis::Client,
    url: String,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        StoreError(format!("Redis: {e}"))
    }
}

impl RedisStore {
    /// Checks the URL; connects on first use.
    pub fn new(url: &str) -> anyhow::Result<RedisStore> {
        Ok(RedisStore {
            client: redis::Client::open(url)?,
            url: crate::broker::redact_url(url),
            conn: tokio::sync::Mutex::new(None),
        })
    }

    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        let mut guard = self.conn.lock().await;
        if let Some(conn) = guard.as_ref() {
            return Ok(conn.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            TIMEOUT,
            self.client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| StoreError(format!("Redis at {} did not answer", self.url)))?
        .map_err(|e| StoreError(format!("Redis at {} is not reachable: {e}", self.url)))?;
        *guard = Some(conn.clone());
        Ok(conn)
    }
}

#[async_trait]
impl KeyValueStore for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.conn().await?.get(key).await?)
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        Ok(self.conn().await?.set(key, value).await?)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        Ok(self.conn().await?.del(key).await?)
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.conn().await?.exists(key).await?)
    }

    async fn keys(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn().await?;
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        Ok(redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut self.conn().await?)
            .await?)
    }

    async fn set_many(&self, pairs: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        if pairs.is_empty() {
            return Ok(());
        }
        Ok(self.conn().await?.mset(pairs).await?)
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        Ok(self.conn().await?.del(keys).await?)
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        Ok(self.conn().await?.incr(key, delta).await?)
    }

    async fn swap(
        &self,
        key: &str,
        current: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, StoreError> {
        let swapped: i64 = redis::Script::new(SWAP)
            .key(key)
            .arg(if current.is_some() { "1" } else { "0" })
            .arg(current.unwrap_or_default())
            .arg(new)
            .invoke_async(&mut self.conn().await?)
            .await?;
        Ok(swapped == 1)
    }
}
