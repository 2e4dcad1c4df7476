//! A workspace's log (`logs/<workspace-id>.log`: its processes' stdout and
//! stderr) as a byte stream: its last `tail` bytes, and with `follow`, what
//! is appended after them for as long as the reader keeps reading.
//!
//! The file is opened without following a link and must be a regular file:
//! a workspace that can reach the logs directory (one run without the
//! sandbox) cannot make the server read something else, nor block it on a
//! FIFO.

use crate::export::ByteStream;
use bytes::Bytes;
use rustix::fs::{Mode, OFlags};
use std::io::{self, SeekFrom};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// The most of a log read back at once.
pub const MAX_TAIL: u64 = 16 * 1024 * 1024;

const CHUNK: usize = 64 * 1024;

/// How often a follower looks for more.
const POLL: Duration = Duration::from_millis(200);

/// The log at `path` from `tail` bytes before its end; `None` when there is
/// none (the workspace never started here).
pub fn open(path: &Path, tail: u64, follow: bool) -> io::Result<Option<ByteStream>> {
    let fd = match rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let stat = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(io::Error::other(
            "the workspace's log is not a regular file",
        ));
    }
    let len = u64::try_from(stat.st_size).unwrap_or(0);
    let start = len.saturating_sub(tail.min(MAX_TAIL));
    let file = tokio::fs::File::from_std(std::fs::File::from(fd));
    let state = Follower {
        file,
        pos: start,
        seeked: false,
        follow,
    };
    Ok(Some(Box::pin(futures_util::stream::unfold(
        state,
        Follower::next,
    ))))
}

struct Follower {
    file: tokio::fs::File,
    pos: u64,
    seeked: bool,
    follow: bool,
}

impl Follower {
    async fn next(mut self) -> Option<(io::Result<Bytes>, Follower)> {
        if !self.seeked {
            if let Err(e) = self.file.seek(SeekFrom::Start(self.pos)).await {
                return Some((Err(e), self));
            }
            self.seeked = true;
        }
        let mut buf = vec![0u8; CHUNK];
        loop {
            match self.file.read(&mut buf).await {
                Ok(0) if !self.follow => return None,
                Ok(0) => {
                    // A start that truncated the log: read it from its
                    // beginning again.
                    if let Ok(meta) = self.file.metadata().await
                        && meta.len() < self.pos
                    {
                        self.pos = 0;
                        if let Err(e) = self.file.seek(SeekFrom::Start(0)).await {
                            return Some((Err(e), self));
                        }
                        continue;
                    }
                    tokio::time::sleep(POLL).await;
                }
                Ok(n) => {
                    self.pos += n as u64;
                    buf.truncate(n);
                    return Some((Ok(Bytes::from(buf)), self));
                }
                Err(e) => return Some((Err(e), self)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    async fn read_all(mut s: ByteStream) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn the_tail_is_the_end_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.log");
        std::fs::write(&path, b"one\ntwo\nthree\n").unwrap();
        let all = read_all(open(&path, 1024, false).unwrap().unwrap()).await;
        assert_eq!(all, b"one\ntwo\nthree\n");
        let tail = read_all(open(&path, 6, false).unwrap().unwrap()).await;
        assert_eq!(tail, b"three\n");
        assert!(
            open(&dir.path().join("none.log"), 10, false)
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_follower_sees_what_is_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.log");
        std::fs::write(&path, b"first\n").unwrap();
        let mut s = open(&path, 1024, true).unwrap().unwrap();
        assert_eq!(&s.next().await.unwrap().unwrap()[..], b"first\n");
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"second\n").unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("the appended line arrives")
            .unwrap()
            .unwrap();
        assert_eq!(&next[..], b"second\n");
    }

    #[tokio::test]
    async fn links_and_fifos_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"admin token").unwrap();
        let link = dir.path().join("w.log");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        assert!(open(&link, 1024, false).is_err(), "a link is not followed");
        // The positive control: the same file, not behind a link, is read.
        assert!(open(&secret, 1024, false).unwrap().is_some());
        let fifo = dir.path().join("f.log");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(
            open(&fifo, 1024, false).is_err(),
            "a FIFO is refused, never blocked on"
        );
    }
}
