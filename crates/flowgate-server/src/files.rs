//! File access for runs outside the server: remote files through the SSRF-safe client, files
//! nodes produce kept in a local folder.

use std::path::PathBuf;

use bytes::Bytes;
use futures::future::BoxFuture;

use flowgate_egress::EgressClient;
use flowgate_engine::inputs::file_kind;
use flowgate_engine::ports::{FilePort, PortError, PortErrorKind};
use flowgate_engine::value::File;

/// The largest file a node may read (Dify's 15 MB upload limit, with headroom for remote
/// files).
const MAX_FILE_BYTES: usize = 100 * 1024 * 1024;

pub struct LocalFiles {
    directory: PathBuf,
    egress: EgressClient,
}

impl LocalFiles {
    pub fn new(directory: PathBuf, egress: EgressClient) -> Self {
        Self { directory, egress }
    }
}

impl FilePort for LocalFiles {
    fn read(&self, file: &File) -> BoxFuture<'static, Result<Bytes, PortError>> {
        let egress = self.egress.clone();
        let directory = self.directory.clone();
        let file = file.clone();
        Box::pin(async move {
            if let Some(id) = file.related_id.as_deref().filter(|_| file.transfer_method != "remote_url") {
                let path = directory.join(sanitize(id));
                return tokio::fs::read(&path)
                    .await
                    .map(Bytes::from)
                    .map_err(|error| PortError::new(PortErrorKind::Other, format!("cannot read file {id}: {error}")));
            }
            match file.remote_url.as_deref().or(file.url.as_deref()) {
                Some(url) => egress.fetch(url, MAX_FILE_BYTES).await,
                None => Err(PortError::new(PortErrorKind::InvalidRequest, "the file has neither a stored copy nor a URL")),
            }
        })
    }

    fn store(&self, content: Bytes, mime_type: &str, filename: &str) -> BoxFuture<'static, Result<File, PortError>> {
        let directory = self.directory.clone();
        let mime_type = mime_type.to_owned();
        let filename = filename.to_owned();
        Box::pin(async move {
            let id = uuid::Uuid::new_v4().to_string();
            tokio::fs::create_dir_all(&directory)
                .await
                .map_err(|error| PortError::new(PortErrorKind::Other, format!("cannot create {}: {error}", directory.display())))?;
            let path = directory.join(&id);
            tokio::fs::write(&path, &content)
                .await
                .map_err(|error| PortError::new(PortErrorKind::Other, format!("cannot write {}: {error}", path.display())))?;
            Ok(tool_file(id, content.len() as i64, mime_type, filename, Some(format!("file://{}", path.display()))))
        })
    }
}

/// The description of a file a node made (Dify's tool files), named after `filename` or, when the
/// node gave none, after its MIME type.
pub fn tool_file(id: String, size: i64, mime_type: String, filename: String, url: Option<String>) -> File {
    let extension = filename
        .rsplit_once('.')
        .map(|(_, extension)| format!(".{}", extension.to_ascii_lowercase()))
        .or_else(|| mime_extension(&mime_type));
    File {
        id: None,
        kind: file_kind(extension.as_deref()).to_owned(),
        transfer_method: "tool_file".into(),
        remote_url: None,
        related_id: Some(id),
        filename: Some(if filename.is_empty() { format!("file{}", extension.clone().unwrap_or_default()) } else { filename }),
        extension,
        mime_type: Some(mime_type),
        size,
        url,
    }
}

fn mime_extension(mime_type: &str) -> Option<String> {
    let main = mime_type.split(';').next().unwrap_or_default().trim();
    let extension = match main {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "application/pdf" => "pdf",
        "text/plain" => "txt",
        "text/csv" => "csv",
        "application/json" => "json",
        _ => return None,
    };
    Some(format!(".{extension}"))
}

/// Stored file ids are uuids; anything else must not walk out of the folder.
fn sanitize(id: &str) -> String {
    id.chars().filter(|ch| ch.is_ascii_alphanumeric() || *ch == '-').collect()
}
