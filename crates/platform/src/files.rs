//! Read-only browsing of a workspace's saved data:
//! `GET /workspaces/{id}/data/files?path=DIR` lists one directory and
//! `GET /workspaces/{id}/data/file?path=FILE` downloads one regular file.
//!
//! The data is untrusted (a workspace may plant links or swap a directory
//! for a link while it is read), so nothing here opens a workspace path by
//! name. Both routes read the control plane's export stream: the archive the
//! handle-based walk builds (`holdfast_cp::tree`, `openat` beneath the
//! volume root, no link ever followed, no FIFO or device opened), the same
//! bytes `GET …/data/export` sends. A listing is the archive's entries one
//! level under the asked directory; a download is one regular file's bytes
//! from it. A symbolic link is shown with its target and never followed; a
//! hard link downloads as the file it names. The cost is one walk per
//! request, which is what keeps it correct on every backend and with a
//! remote control plane.

use crate::App;
use crate::auth::Auth;
use crate::dto::ErrorBody;
use crate::error::{ApiError, ApiResult};
use crate::routes::{parse_id, parse_query};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use holdfast_cp::export::ByteStream;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use utoipa::ToSchema;

/// At most this many entries of one directory are listed (`truncated` says
/// when there were more).
pub const MAX_LISTED: usize = 1000;

/// How many file sizes a listing remembers for the hard links it meets.
const MAX_SIZES: usize = 100_000;

/// One entry of a directory.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct FileEntry {
    /// The entry's name (bytes that are not UTF-8 are shown replaced).
    pub name: String,
    /// Its path from the data dir's root, for the next request.
    pub path: String,
    /// `dir`, `file`, `symlink`, `hardlink` or `other` (a FIFO or device).
    pub kind: String,
    /// Bytes of a regular file (or of the file a hard link shares content
    /// with); 0 for the rest.
    pub size: u64,
    /// What a symbolic link points to (never followed), or the path a hard
    /// link shares its content with.
    pub target: Option<String>,
}

/// What `GET /workspaces/{id}/data/files` answers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FileListing {
    /// The directory listed (`""` is the data dir itself).
    pub path: String,
    /// Directories first, then by name.
    pub entries: Vec<FileEntry>,
    /// More entries than `MAX_LISTED` (1000): only the first are listed.
    pub truncated: bool,
}

/// A `path` query value as components: relative, `/`-separated, no `.`,
/// `..` or empty components, no NUL.
fn parse_rel_path(raw: &str) -> ApiResult<Vec<String>> {
    let bad = |why: &str| {
        ApiError::bad_request("invalid_field", format!("path: {why}")).with("field", "path")
    };
    if raw.contains('\0') {
        return Err(bad("must not contain NUL"));
    }
    if raw.starts_with('/') {
        return Err(bad("must be relative to the data dir (no leading /)"));
    }
    let trimmed = raw.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for part in trimmed.split('/') {
        match part {
            "" => return Err(bad("has an empty component (//)")),
            "." | ".." => return Err(bad("must not contain . or .. components")),
            p => out.push(p.to_owned()),
        }
    }
    Ok(out)
}

/// An archive entry's path as components (`./a/b/` → `[a, b]`).
fn components(raw: &[u8]) -> Vec<Vec<u8>> {
    raw.split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
        .collect()
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn kind_of(t: tar::EntryType) -> &'static str {
    match t {
        tar::EntryType::Directory => "dir",
        tar::EntryType::Regular | tar::EntryType::Continuous => "file",
        tar::EntryType::Symlink => "symlink",
        tar::EntryType::Link => "hardlink",
        _ => "other",
    }
}

/// The archive the export stream carries, read on this (blocking) thread.
fn archive(stream: ByteStream) -> tar::Archive<impl Read> {
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    tar::Archive::new(flate2::read::GzDecoder::new(reader))
}

/// What a scan of one directory found: its entries and whether there were
/// more than `MAX_LISTED`; `None` when no entry of the archive is the
/// directory or under it; `Err(kind)` when it is not a directory.
type Scanned = Result<Option<(Vec<FileEntry>, bool)>, &'static str>;

/// Lists the entries one level under `dir`.
fn scan_dir(stream: ByteStream, dir: &[String]) -> io::Result<Scanned> {
    let want: Vec<&[u8]> = dir.iter().map(|c| c.as_bytes()).collect();
    let mut seen = dir.is_empty();
    let mut children: BTreeMap<Vec<u8>, FileEntry> = BTreeMap::new();
    let mut more = false;
    // Regular files' sizes by path, so that a hard link (archived after the
    // name it shares content with) shows its size; bounded.
    let mut sizes: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut ar = archive(stream);
    for entry in ar.entries()? {
        let entry = entry?;
        let path = components(&entry.path_bytes());
        let head = entry.header();
        if kind_of(head.entry_type()) == "file" && sizes.len() < MAX_SIZES {
            sizes.insert(path.join(&b'/'), head.size()?);
        }
        if path.len() < want.len() || path.iter().zip(&want).any(|(a, b)| a.as_slice() != *b) {
            continue;
        }
        if path.len() == want.len() {
            if path.is_empty() {
                continue;
            }
            let kind = kind_of(head.entry_type());
            if kind != "dir" {
                return Ok(Err(kind));
            }
            seen = true;
            continue;
        }
        seen = true;
        let name = path[want.len()].clone();
        let child_path = path[..=want.len()]
            .iter()
            .map(|c| lossy(c))
            .collect::<Vec<_>>()
            .join("/");
        let direct = path.len() == want.len() + 1;
        if children.contains_key(&name) {
            continue;
        }
        if children.len() >= MAX_LISTED {
            more = true;
            continue;
        }
        let (kind, size, target) = if direct {
            let kind = kind_of(head.entry_type());
            let size = match kind {
                "file" => head.size()?,
                "hardlink" => entry
                    .link_name_bytes()
                    .and_then(|t| sizes.get(&components(&t).join(&b'/')).copied())
                    .unwrap_or(0),
                _ => 0,
            };
            let target = match kind {
                "symlink" | "hardlink" => entry.link_name_bytes().map(|t| lossy(&t)),
                _ => None,
            };
            (kind, size, target)
        } else {
            // An entry deeper down: its ancestor here is a directory.
            ("dir", 0, None)
        };
        children.insert(
            name.clone(),
            FileEntry {
                name: lossy(&name),
                path: child_path,
                kind: kind.to_owned(),
                size,
                target,
            },
        );
    }
    if !seen {
        return Ok(Ok(None));
    }
    let mut entries: Vec<FileEntry> = children.into_values().collect();
    entries.sort_by(|a, b| {
        (a.kind != "dir")
            .cmp(&(b.kind != "dir"))
            .then(a.name.cmp(&b.name))
    });
    Ok(Ok(Some((entries, more))))
}

/// What a search for one file found.
enum Found {
    /// A regular file: its size; its bytes follow on the channel.
    File(u64),
    /// A hard link to this archive path (found earlier in the walk).
    HardLink(Vec<u8>),
    /// Something that is not a regular file (its kind).
    NotAFile(&'static str, Option<String>),
    Missing,
}

/// Finds `want` in the archive and, when it is a regular file, sends its
/// bytes in chunks after telling its size.
fn send_file(
    stream: ByteStream,
    want: &[Vec<u8>],
    found: oneshot::Sender<io::Result<Found>>,
    tx: mpsc::Sender<io::Result<Bytes>>,
) {
    let mut found = Some(found);
    fn tell(slot: &mut Option<oneshot::Sender<io::Result<Found>>>, f: io::Result<Found>) {
        if let Some(s) = slot.take() {
            let _ = s.send(f);
        }
    }
    let result = (|| -> io::Result<Option<Found>> {
        let mut ar = archive(stream);
        for entry in ar.entries()? {
            let mut entry = entry?;
            if components(&entry.path_bytes()) != want {
                continue;
            }
            let t = entry.header().entry_type();
            return Ok(Some(match kind_of(t) {
                "file" => {
                    tell(&mut found, Ok(Found::File(entry.header().size()?)));
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = entry.read(&mut buf)?;
                        if n == 0 {
                            return Ok(None);
                        }
                        if tx
                            .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                            .is_err()
                        {
                            // The client went away.
                            return Ok(None);
                        }
                    }
                }
                "hardlink" => Found::HardLink(
                    entry
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default(),
                ),
                kind => Found::NotAFile(kind, entry.link_name_bytes().map(|t| lossy(&t))),
            }));
        }
        Ok(Some(Found::Missing))
    })();
    match result {
        Ok(Some(f)) => tell(&mut found, Ok(f)),
        Ok(None) => {}
        Err(e) => {
            // Before the size was told, the request fails; after, the body.
            if found.is_some() {
                tell(&mut found, Err(e));
            } else {
                let _ = tx.blocking_send(Err(e));
            }
        }
    }
}

fn read_failed(e: io::Error) -> ApiError {
    tracing::warn!(error = %e, "reading a workspace's data for the files view failed");
    ApiError::conflict(
        "data_unreadable",
        format!("the workspace's data could not be read: {e}"),
    )
}

fn worker_failed() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "reading the workspace's data stopped unexpectedly; see the server log",
    )
}

fn path_param(uri: &Uri) -> ApiResult<Vec<String>> {
    let mut path = String::new();
    for (_, v) in parse_query(uri.query(), &["path"])? {
        path = v;
    }
    parse_rel_path(&path)
}

#[utoipa::path(
    get, path = "/workspaces/{id}/data/files",
    params(
        ("id" = Uuid, Path, description = "workspace id"),
        ("path" = Option<String>, Query, description = "a directory relative to the data dir; empty or absent for the data dir itself"),
    ),
    responses(
        (status = 200, body = FileListing),
        (status = 400, body = ErrorBody, description = "a malformed path, or a path that is not a directory (not_a_directory)"),
        (status = 404, body = ErrorBody, description = "no such workspace, or no such directory (path_not_found)"),
        (status = 409, body = ErrorBody, description = "the data was erased or cannot be read"),
        (status = 503, body = ErrorBody, description = "control_plane_unreachable"),
    ),
    security(("bearer" = []))
)]
pub async fn list_files(
    State(app): State<Arc<App>>,
    Auth(caller): Auth,
    Path(raw): Path<String>,
    uri: Uri,
) -> ApiResult<Json<FileListing>> {
    let id = parse_id(&raw)?;
    let dir = path_param(&uri)?;
    let (_, stream) = app.ctl.export(&caller, id).await?;
    let want = dir.clone();
    let scanned = tokio::task::spawn_blocking(move || scan_dir(stream, &want))
        .await
        .map_err(|_| worker_failed())?
        .map_err(read_failed)?;
    let shown = dir.join("/");
    match scanned {
        Err(kind) => Err(ApiError::bad_request(
            "not_a_directory",
            format!("path: {shown} is not a directory (it is a {kind})"),
        )
        .with("field", "path")),
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "path_not_found",
            format!("path: {shown} is not in the workspace's data"),
        )),
        Ok(Some((entries, truncated))) => Ok(Json(FileListing {
            path: shown,
            entries,
            truncated,
        })),
    }
}

#[utoipa::path(
    get, path = "/workspaces/{id}/data/file",
    params(
        ("id" = Uuid, Path, description = "workspace id"),
        ("path" = String, Query, description = "a regular file relative to the data dir"),
    ),
    responses(
        (status = 200, description = "the file's bytes, as a download", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, body = ErrorBody, description = "a malformed path, or one that is not a regular file (not_a_file)"),
        (status = 404, body = ErrorBody, description = "no such workspace, or no such file (path_not_found)"),
        (status = 409, body = ErrorBody, description = "the data was erased or cannot be read"),
        (status = 503, body = ErrorBody, description = "control_plane_unreachable"),
    ),
    security(("bearer" = []))
)]
pub async fn get_file(
    State(app): State<Arc<App>>,
    Auth(caller): Auth,
    Path(raw): Path<String>,
    uri: Uri,
) -> ApiResult<Response> {
    let id = parse_id(&raw)?;
    let path = path_param(&uri)?;
    if path.is_empty() {
        return Err(
            ApiError::bad_request("invalid_field", "path: name a file of the data dir")
                .with("field", "path"),
        );
    }
    let shown = path.join("/");
    let mut want: Vec<Vec<u8>> = path.iter().map(|c| c.as_bytes().to_vec()).collect();
    // A hard link is followed once, to the path it shares content with
    // (inside the archive: it never leaves the data).
    for _ in 0..2 {
        let (_, stream) = app.ctl.export(&caller, id).await?;
        let (found_tx, found_rx) = oneshot::channel();
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
        let looking_for = want.clone();
        tokio::task::spawn_blocking(move || send_file(stream, &looking_for, found_tx, tx));
        match found_rx
            .await
            .map_err(|_| worker_failed())?
            .map_err(read_failed)?
        {
            Found::File(size) => {
                let body = Body::from_stream(tokio_stream_of(rx));
                let name = path.last().map(String::as_str).unwrap_or("file");
                return Ok((
                    StatusCode::OK,
                    [
                        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                        (header::CONTENT_LENGTH, size.to_string()),
                        (
                            header::CONTENT_DISPOSITION,
                            format!("attachment; filename=\"{}\"", download_name(name)),
                        ),
                        // Workspace bytes are never rendered by the browser
                        // on this origin.
                        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
                        (header::CONTENT_SECURITY_POLICY, "sandbox".to_owned()),
                        (header::CACHE_CONTROL, "no-store".to_owned()),
                    ],
                    body,
                )
                    .into_response());
            }
            Found::HardLink(target) => want = components(&target),
            Found::NotAFile(kind, target) => {
                let extra = match (kind, target) {
                    ("symlink", Some(t)) => {
                        format!(" (it points to {t}; holdfast never follows links)")
                    }
                    _ => String::new(),
                };
                return Err(ApiError::bad_request(
                    "not_a_file",
                    format!("path: {shown} is a {kind}, not a regular file{extra}"),
                )
                .with("field", "path"));
            }
            Found::Missing => break,
        }
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "path_not_found",
        format!("path: {shown} is not in the workspace's data"),
    ))
}

fn tokio_stream_of(
    mut rx: mpsc::Receiver<io::Result<Bytes>>,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A file name safe in a `Content-Disposition` header.
fn download_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.trim_matches('.').is_empty() {
        "file".to_owned()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tgz(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> ByteStream {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let raw = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        let bytes = Bytes::from(gz.finish().unwrap());
        Box::pin(futures_util::stream::iter([Ok(bytes)]))
    }

    fn header(t: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(t);
        h.set_size(size);
        h.set_mode(0o644);
        h
    }

    fn sample() -> ByteStream {
        tgz(|b| {
            b.append_data(
                &mut header(tar::EntryType::Directory, 0),
                "notes",
                std::io::empty(),
            )
            .unwrap();
            b.append_data(
                &mut header(tar::EntryType::Regular, 5),
                "notes/a.txt",
                &b"hello"[..],
            )
            .unwrap();
            b.append_data(
                &mut header(tar::EntryType::Regular, 2),
                "top.txt",
                &b"hi"[..],
            )
            .unwrap();
            b.append_link(
                &mut header(tar::EntryType::Symlink, 0),
                "escape",
                "/etc/passwd",
            )
            .unwrap();
            b.append_data(
                &mut header(tar::EntryType::Regular, 1),
                "deep/er/x",
                &b"x"[..],
            )
            .unwrap();
        })
    }

    fn scan(dir: &[&str]) -> Scanned {
        let dir: Vec<String> = dir.iter().map(|s| s.to_string()).collect();
        scan_dir(sample(), &dir).unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn lists_one_level_with_directories_first() {
        let got = tokio::task::spawn_blocking(|| scan(&[])).await.unwrap();
        let (entries, more) = got.unwrap().unwrap();
        assert!(!more);
        let names: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.name.as_str(), e.kind.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("deep", "dir"),
                ("notes", "dir"),
                ("escape", "symlink"),
                ("top.txt", "file")
            ]
        );
        let link = entries.iter().find(|e| e.name == "escape").unwrap();
        assert_eq!(link.target.as_deref(), Some("/etc/passwd"));
        let top = entries.iter().find(|e| e.name == "top.txt").unwrap();
        assert_eq!(top.size, 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_subdirectory_a_file_and_a_missing_path() {
        let (notes, _) = tokio::task::spawn_blocking(|| scan(&["notes"]))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].path, "notes/a.txt");
        let file = tokio::task::spawn_blocking(|| scan(&["top.txt"]))
            .await
            .unwrap();
        assert_eq!(file, Err("file"));
        let link = tokio::task::spawn_blocking(|| scan(&["escape"]))
            .await
            .unwrap();
        assert_eq!(link, Err("symlink"), "a link is never listed through");
        let missing = tokio::task::spawn_blocking(|| scan(&["nope"]))
            .await
            .unwrap();
        assert_eq!(missing, Ok(None));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn sends_a_file_and_refuses_a_link() {
        let (ftx, frx) = oneshot::channel();
        let (tx, mut rx) = mpsc::channel(4);
        let want = vec![b"notes".to_vec(), b"a.txt".to_vec()];
        tokio::task::spawn_blocking(move || send_file(sample(), &want, ftx, tx));
        assert!(matches!(frx.await.unwrap().unwrap(), Found::File(5)));
        let mut got = Vec::new();
        while let Some(chunk) = rx.recv().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(got, b"hello");

        let (ftx, frx) = oneshot::channel();
        let (tx, _rx) = mpsc::channel(4);
        let want = vec![b"escape".to_vec()];
        tokio::task::spawn_blocking(move || send_file(sample(), &want, ftx, tx));
        assert!(matches!(
            frx.await.unwrap().unwrap(),
            Found::NotAFile("symlink", Some(_))
        ));
    }

    #[test]
    fn paths_are_checked() {
        assert_eq!(parse_rel_path("").unwrap(), Vec::<String>::new());
        assert_eq!(parse_rel_path("a/b/").unwrap(), ["a", "b"]);
        for bad in ["/etc", "a/../b", "./a", "a//b", "a\0b"] {
            assert!(parse_rel_path(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(download_name("../x y.txt"), ".._x_y.txt");
        assert_eq!(download_name(".."), "file");
    }
}
