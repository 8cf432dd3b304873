//! Blobs: uploaded files and large run-log payloads, in a local folder (embedded mode) or an
//! S3-compatible bucket (`BLOB_URL=s3://bucket/prefix`; credentials and endpoint from the
//! usual `AWS_*` environment variables).

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::db::StoreConfig;
use crate::error::StoreError;

#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    description: String,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

impl Blobs {
    pub(crate) async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        match config.blob_url.as_deref() {
            None => {
                let dir = config.data_dir.join("blobs");
                Self::local(&dir)
            }
            Some(url) if url.starts_with("file://") => Self::local(std::path::Path::new(url.trim_start_matches("file://"))),
            Some(url) if url.starts_with("s3://") => {
                let parsed = url::Url::parse(url).map_err(|error| StoreError::Config(format!("BLOB_URL {url}: {error}")))?;
                // reqwest is built without a default TLS provider, so the one stack is chosen here
                // (ring); the egress client may have installed the same one first.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let bucket = parsed.host_str().ok_or_else(|| StoreError::Config(format!("BLOB_URL {url} names no bucket")))?;
                let store = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(|error| StoreError::Config(format!("BLOB_URL {url}: {error}")))?;
                let prefix = parsed.path().trim_matches('/');
                let store: Arc<dyn ObjectStore> =
                    if prefix.is_empty() { Arc::new(store) } else { Arc::new(object_store::prefix::PrefixStore::new(store, prefix)) };
                Ok(Self { store, description: format!("s3://{bucket}/{prefix}") })
            }
            Some("memory://") => Ok(Self { store: Arc::new(object_store::memory::InMemory::new()), description: "memory://".into() }),
            Some(other) => Err(StoreError::Config(format!("BLOB_URL must start with s3:// or file:// (got `{other}`)"))),
        }
    }

    fn local(dir: &std::path::Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|error| StoreError::Config(format!("cannot create {}: {error}", dir.display())))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|error| StoreError::Config(format!("blob folder {}: {error}", dir.display())))?;
        Ok(Self { store: Arc::new(store), description: format!("file://{}", dir.display()) })
    }

    pub fn describe(&self) -> &str {
        &self.description
    }

    pub async fn put(&self, key: &str, content: Bytes) -> Result<(), StoreError> {
        self.store.put(&Path::from(key), PutPayload::from_bytes(content)).await?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        match self.store.get(&Path::from(key)).await {
            Ok(result) => Ok(result.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => Err(StoreError::NotFound("blob")),
            Err(error) => Err(error.into()),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}
