//! The guest's key-value interfaces over the stores of [`crate::keyvalue`]:
//! `wasi:keyvalue@0.2.0-draft2` (`store`, `atomics` with compare-and-swap,
//! `batch`), the version Spin hosts, and Spin's `fermyon:spin/key-value`.
//! A component opens only the labels in its `key_value_stores`; any other
//! label is `access-denied`, as in Spin.

use super::State;
use super::bindings::{kv_atomics, kv_batch, kv_store, spin_key_value};
use crate::keyvalue::{KeyValueStore, StoreError};
use std::sync::Arc;
use wasmtime::component::Resource;

/// An open store, for both interfaces.
pub struct Bucket {
    store: Arc<dyn KeyValueStore>,
}

/// A compare-and-swap under way: the value `key` held when it began.
pub struct Cas {
    store: Arc<dyn KeyValueStore>,
    key: String,
    seen: Option<Vec<u8>>,
}

/// Handles (stores, CAS operations) one instance may hold open at once:
/// each costs host memory the instance's memory limit does not count.
const MAX_HANDLES: usize = 1024;

/// Why a store cannot be opened.
enum Refused {
    NotGranted,
    TooMany,
}

impl State {
    /// Opens `label` if the component may.
    fn open_bucket(&mut self, label: &str) -> Result<Resource<Bucket>, Refused> {
        let grants = &self.grants;
        let Some(store) = grants.stores.get(label) else {
            if grants.first_refusal(format!("key-value store {label}")) {
                tracing::warn!(
                    app = %grants.app, component = %grants.component,
                    "the component opened key-value store `{label}`, which it may not: add it to `key_value_stores` in [component.{}]",
                    grants.component
                );
            }
            return Err(Refused::NotGranted);
        };
        let bucket = Bucket {
            store: store.clone(),
        };
        self.push_handle(bucket).ok_or(Refused::TooMany)
    }

    fn push_handle<T: Send + 'static>(&mut self, value: T) -> Option<Resource<T>> {
        if self.kv_handles >= MAX_HANDLES {
            return None;
        }
        let handle = self.table.push(value).ok()?;
        self.kv_handles += 1;
        Some(handle)
    }

    fn drop_handle<T: 'static>(&mut self, handle: Resource<T>) -> wasmtime::Result<()> {
        self.table.delete(handle)?;
        self.kv_handles -= 1;
        Ok(())
    }

    fn store(&self, bucket: &Resource<Bucket>) -> wasmtime::Result<Arc<dyn KeyValueStore>> {
        Ok(self.table.get(bucket)?.store.clone())
    }

    /// A CAS handle on `key`'s current value.
    async fn new_cas(
        &mut self,
        store: Arc<dyn KeyValueStore>,
        key: String,
    ) -> Result<Resource<Cas>, kv_store::Error> {
        let seen = store.get(&key).await.map_err(other)?;
        self.push_handle(Cas { store, key, seen })
            .ok_or_else(too_many_handles)
    }
}

fn other(e: StoreError) -> kv_store::Error {
    kv_store::Error::Other(e.0)
}

fn too_many_handles() -> kv_store::Error {
    kv_store::Error::Other(format!(
        "more than {MAX_HANDLES} stores and CAS operations open at once; drop some first"
    ))
}

impl kv_store::Host for State {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<Bucket>, kv_store::Error>> {
        Ok(self.open_bucket(&identifier).map_err(|r| match r {
            Refused::NotGranted => kv_store::Error::AccessDenied,
            Refused::TooMany => too_many_handles(),
        }))
    }
}

impl kv_store::HostBucket for State {
    async fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, kv_store::Error>> {
        Ok(self.store(&bucket)?.get(&key).await.map_err(other))
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), kv_store::Error>> {
        Ok(self.store(&bucket)?.set(&key, &value).await.map_err(other))
    }

    async fn delete(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<(), kv_store::Error>> {
        Ok(self.store(&bucket)?.delete(&key).await.map_err(other))
    }

    async fn exists(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<bool, kv_store::Error>> {
        Ok(self.store(&bucket)?.exists(&key).await.map_err(other))
    }

    /// Every key in one answer: there is never a next page.
    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<kv_store::KeyResponse, kv_store::Error>> {
        if cursor.is_some() {
            return Ok(Err(kv_store::Error::Other(
                "list-keys takes no cursor here: the first answer holds every key".into(),
            )));
        }
        let keys = self.store(&bucket)?.keys().await;
        Ok(keys
            .map(|keys| kv_store::KeyResponse { keys, cursor: None })
            .map_err(other))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.drop_handle(bucket)
    }
}

impl kv_atomics::Host for State {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, kv_store::Error>> {
        Ok(self
            .store(&bucket)?
            .increment(&key, delta)
            .await
            .map_err(other))
    }

    async fn swap(
        &mut self,
        cas: Resource<Cas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), kv_atomics::CasError>> {
        use kv_atomics::CasError;
        let Cas { store, key, seen } = self.table.delete(cas)?;
        self.kv_handles -= 1;
        Ok(match store.swap(&key, seen.as_deref(), &value).await {
            Ok(true) => Ok(()),
            Ok(false) => match self.new_cas(store, key).await {
                Ok(fresh) => Err(CasError::CasFailed(fresh)),
                Err(e) => Err(CasError::StoreError(e)),
            },
            Err(e) => Err(CasError::StoreError(other(e))),
        })
    }
}

impl kv_atomics::HostCas for State {
    async fn new(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<Cas>, kv_store::Error>> {
        let store = self.store(&bucket)?;
        Ok(self.new_cas(store, key).await)
    }

    async fn current(
        &mut self,
        cas: Resource<Cas>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, kv_store::Error>> {
        Ok(Ok(self.table.get(&cas)?.seen.clone()))
    }

    async fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.drop_handle(cas)
    }
}

impl kv_batch::Host for State {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<(String, Option<Vec<u8>>)>, kv_store::Error>> {
        let values = self.store(&bucket)?.get_many(&keys).await;
        Ok(values
            .map(|values| keys.into_iter().zip(values).collect())
            .map_err(other))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), kv_store::Error>> {
        Ok(self
            .store(&bucket)?
            .set_many(&key_values)
            .await
            .map_err(other))
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), kv_store::Error>> {
        Ok(self.store(&bucket)?.delete_many(&keys).await.map_err(other))
    }
}

impl spin_key_value::Host for State {}

impl spin_key_value::HostStore for State {
    async fn open(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Resource<Bucket>, spin_key_value::Error>> {
        use spin_key_value::Error;
        Ok(self.open_bucket(&label).map_err(|r| match r {
            Refused::NotGranted => Error::AccessDenied,
            Refused::TooMany => Error::StoreTableFull,
        }))
    }

    async fn get(
        &mut self,
        store: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, spin_key_value::Error>> {
        Ok(self.store(&store)?.get(&key).await.map_err(spin_other))
    }

    async fn set(
        &mut self,
        store: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), spin_key_value::Error>> {
        Ok(self
            .store(&store)?
            .set(&key, &value)
            .await
            .map_err(spin_other))
    }

    async fn delete(
        &mut self,
        store: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<(), spin_key_value::Error>> {
        Ok(self.store(&store)?.delete(&key).await.map_err(spin_other))
    }

    async fn exists(
        &mut self,
        store: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<bool, spin_key_value::Error>> {
        Ok(self.store(&store)?.exists(&key).await.map_err(spin_other))
    }

    async fn get_keys(
        &mut self,
        store: Resource<Bucket>,
    ) -> wasmtime::Result<Result<Vec<String>, spin_key_value::Error>> {
        Ok(self.store(&store)?.keys().await.map_err(spin_other))
    }

    async fn drop(&mut self, store: Resource<Bucket>) -> wasmtime::Result<()> {
        self.drop_handle(store)
    }
}

fn spin_other(e: StoreError) -> spin_key_value::Error {
    spin_key_value::Error::Other(e.0)
}
