//! Waits for the workspaces' processes, on a thread whose file descriptor
//! table is its own.
//!
//! Each running workspace needs a pidfd to learn of its exit as an event.
//! Held in the server's descriptor table, 10,000 of them made every start
//! cost O(fleet): a spawn copies the spawning thread's whole table, and the
//! exec then closes every copied descriptor, so the ten-thousandth start
//! paid for ten thousand descriptors (growing a fleet from 1,000 to 10,000
//! fell from 336 to 159 creates/s). Here the pidfds live in the table of
//! one thread, which unshares its table at start (`unshare(CLONE_FILES)`)
//! and runs a runtime of its own; the server's table stays small, and a
//! spawn from any other thread copies only that.
//!
//! No descriptor crosses between the two tables: the server hands over a
//! spawned [`std::process::Child`] (a pid, no descriptors, since its stdio
//! goes to a file the server has already closed), and the reaper opens,
//! polls and closes the pidfd itself. Where the thread cannot be had (an
//! `unshare` refused), the same wait runs on the caller's runtime instead.

use rustix::event::epoll;
use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

/// One process to wait for, and whom to tell of its exit.
pub(crate) struct Watched {
    pub child: std::process::Child,
    pub workspace_id: Uuid,
    /// Its exit code (`Some(None)`: killed by a signal) once it exited.
    pub exit: watch::Sender<Option<Option<i32>>>,
    /// Every exit, by workspace: the reconciler acts on it.
    pub exits: broadcast::Sender<Uuid>,
}

pub(crate) enum Reaper {
    /// The reaper thread, with a private descriptor table: what to watch
    /// goes down the channel, and an eventfd (in both tables, made before
    /// the split) wakes it.
    Thread {
        tx: Option<std::sync::mpsc::Sender<Watched>>,
        wake: OwnedFd,
    },
    /// Waits on the caller's runtime (the thread could not be started).
    Inline,
}

impl Reaper {
    pub fn start() -> Reaper {
        match start_thread() {
            Ok((tx, wake)) => Reaper::Thread { tx: Some(tx), wake },
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "no reaper thread; each start now costs in proportion to the running fleet"
                );
                Reaper::Inline
            }
        }
    }

    /// Waits for `w`'s process in the background.
    pub fn watch(&self, w: Watched) {
        match self {
            Reaper::Thread { tx: Some(tx), wake } => match tx.send(w) {
                Ok(()) => ring(wake),
                // The thread is gone (it only ends with its backend).
                Err(std::sync::mpsc::SendError(w)) => {
                    tokio::spawn(wait_inline(w));
                }
            },
            Reaper::Thread { tx: None, .. } | Reaper::Inline => {
                tokio::spawn(wait_inline(w));
            }
        }
    }
}

impl Drop for Reaper {
    /// The thread ends once the processes it waits for have exited.
    fn drop(&mut self) {
        if let Reaper::Thread { tx, wake } = self {
            drop(tx.take());
            ring(wake);
        }
    }
}

fn ring(wake: &OwnedFd) {
    let _ = rustix::io::write(wake, &1u64.to_ne_bytes());
}

fn start_thread() -> io::Result<(std::sync::mpsc::Sender<Watched>, OwnedFd)> {
    let (tx, rx) = std::sync::mpsc::channel::<Watched>();
    // Exits are told from a thread of the server's table: waking a tokio
    // task writes to its runtime's eventfd by number, which names nothing
    // (or a pidfd) in the reaper's table. A std channel needs no
    // descriptor.
    let (told_tx, told_rx) = std::sync::mpsc::channel::<(Watched, Option<i32>)>();
    std::thread::Builder::new()
        .name("holdfast-exits".to_owned())
        .spawn(move || {
            for (w, code) in told_rx {
                tell(w, code);
            }
        })?;
    let wake = rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    )?;
    let wake_no = std::os::fd::AsRawFd::as_raw_fd(&wake);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
    std::thread::Builder::new()
        .name("holdfast-reaper".to_owned())
        .spawn(move || {
            let setup = private_table(wake_no).and_then(|wake| {
                let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
                epoll::add(
                    &ep,
                    &wake,
                    epoll::EventData::new_u64(WAKE),
                    epoll::EventFlags::IN,
                )?;
                Ok((ep, wake))
            });
            match setup {
                Ok((ep, wake)) => {
                    let _ = ready_tx.send(Ok(()));
                    if let Err(e) = reap(&ep, &wake, &rx, &told_tx) {
                        tracing::error!(error = %e, "the reaper thread stopped");
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
    ready_rx
        .recv()
        .map_err(|_| io::Error::other("the reaper thread ended before it started"))??;
    Ok((tx, wake))
}

/// The epoll key of the wake eventfd; pidfds count up from 1.
const WAKE: u64 = 0;

/// Gives this thread a descriptor table of its own, holding only stdin,
/// stdout, stderr and its copy of the wake eventfd `wake_no` (returned):
/// the copies of the server's other descriptors that `unshare` made are
/// closed (the server's own stay open).
#[allow(unsafe_code)]
fn private_table(wake_no: i32) -> io::Result<OwnedFd> {
    // SAFETY: this thread never uses a descriptor opened on another thread,
    // and hands none to one: only processes (pids) come in, only exit
    // codes go out.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FILES) }?;
    // SAFETY: `wake_no` is open in the table just copied, and this copy is
    // this thread's alone: nothing else closes it.
    let wake = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(wake_no) };
    let fds: Vec<i32> = std::fs::read_dir("/proc/thread-self/fd")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2 && *fd != wake_no)
        .collect();
    for fd in fds {
        // This thread's private copy (or the directory handle above,
        // already closed: then EBADF, ignored).
        let _ = nix::unistd::close(fd);
    }
    Ok(wake)
}

/// The reaper's loop: a pidfd per process in one epoll set; a process
/// that exits is reaped and reported. Where pidfds are missing (a kernel
/// before 5.3), its processes are polled every half second instead.
fn reap(
    ep: &OwnedFd,
    wake: &OwnedFd,
    rx: &std::sync::mpsc::Receiver<Watched>,
    told: &std::sync::mpsc::Sender<(Watched, Option<i32>)>,
) -> io::Result<()> {
    let finish = |mut w: Watched| {
        let code = w.child.wait().ok().and_then(|s| s.code());
        let _ = told.send((w, code));
    };
    let mut watched: HashMap<u64, (Watched, OwnedFd)> = HashMap::new();
    let mut polled: Vec<Watched> = Vec::new();
    let mut next_key = WAKE + 1;
    let mut open = true;
    let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
    let half_second = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 500_000_000,
    };
    while open || !watched.is_empty() || !polled.is_empty() {
        events.clear();
        let timeout = (!polled.is_empty()).then_some(&half_second);
        match epoll::wait(ep, rustix::buffer::spare_capacity(&mut events), timeout) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        for ev in &events {
            let key = ev.data.u64();
            if key == WAKE {
                let mut buf = [0u8; 8];
                let _ = rustix::io::read(wake, &mut buf);
                loop {
                    match rx.try_recv() {
                        Ok(w) => {
                            let pid = i32::try_from(w.child.id())
                                .ok()
                                .and_then(rustix::process::Pid::from_raw);
                            let fd = pid.and_then(|pid| {
                                rustix::process::pidfd_open(
                                    pid,
                                    rustix::process::PidfdFlags::empty(),
                                )
                                .ok()
                            });
                            match fd {
                                // A pidfd the set refuses is polled
                                // instead: no process goes unwatched.
                                Some(fd)
                                    if epoll::add(
                                        ep,
                                        &fd,
                                        epoll::EventData::new_u64(next_key),
                                        epoll::EventFlags::IN,
                                    )
                                    .is_ok() =>
                                {
                                    watched.insert(next_key, (w, fd));
                                    next_key += 1;
                                }
                                _ => polled.push(w),
                            }
                        }
                        Err(std::sync::mpsc::TryRecvError::Empty) => break,
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                            open = false;
                            break;
                        }
                    }
                }
            } else if let Some((w, fd)) = watched.remove(&key) {
                let _ = epoll::delete(ep, &fd);
                drop(fd);
                // Exited: the wait returns at once.
                finish(w);
            }
        }
        let mut still = Vec::with_capacity(polled.len());
        for mut w in polled.drain(..) {
            match w.child.try_wait() {
                Ok(None) => still.push(w),
                _ => finish(w),
            }
        }
        polled = still;
    }
    Ok(())
}

/// Tells both listeners of an exit.
fn tell(w: Watched, code: Option<i32>) {
    let _ = w.exit.send(Some(code));
    // Nobody listening is fine: the resync finds it.
    let _ = w.exits.send(w.workspace_id);
}

/// The fallback: a pidfd on the caller's runtime (in the server's table),
/// or a poll every half second where pidfds are missing.
async fn wait_inline(mut w: Watched) {
    if exited(w.child.id()).await.is_none() {
        while let Ok(None) = w.child.try_wait() {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
    let code = w.child.wait().ok().and_then(|s| s.code());
    tell(w, code);
}

/// Waits on a pidfd of `pid` until the process exits; `None` where no
/// pidfd can be had.
#[allow(unsafe_code)]
async fn exited(pid: u32) -> Option<()> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::NONBLOCK).ok()?;
    // SAFETY: the `AsyncFd` owns the `OwnedFd`, which stays open, the same
    // descriptor, until the `AsyncFd` drops it.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    }
    .ok()?;
    let _ = fd.readable().await.ok()?;
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exit a watch reports, within 10 s.
    async fn exit_of(
        rx: &mut watch::Receiver<Option<Option<i32>>>,
        what: &str,
    ) -> Option<Option<i32>> {
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            rx.wait_for(Option::is_some),
        )
        .await
        .expect(what)
        .map(|c| *c)
        .unwrap()
    }

    /// The pidfds in this (the test's) descriptor table.
    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("pidfd"))
            })
            .count()
    }

    #[tokio::test]
    async fn exits_are_reported_and_the_pidfds_stay_out_of_the_server_table() {
        let reaper = Reaper::start();
        assert!(
            matches!(reaper, Reaper::Thread { .. }),
            "the reaper thread starts"
        );
        let (exits, mut heard) = broadcast::channel(64);
        let before = open_fds();
        let mut waits = Vec::new();
        for i in 0..20 {
            let child = std::process::Command::new("/bin/sleep")
                .arg("30")
                .spawn()
                .unwrap();
            let (tx, rx) = watch::channel(None);
            waits.push((child.id(), rx));
            reaper.watch(Watched {
                child,
                workspace_id: Uuid::from_u128(i),
                exit: tx,
                exits: exits.clone(),
            });
        }
        // Give the reaper time to open its pidfds.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let during = open_fds();
        // The positive control: the same waits on this runtime hold a
        // pidfd each in this table.
        let inline = Reaper::Inline;
        let (tx, mut inline_rx) = watch::channel(None);
        let control = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let control_pid = control.id();
        inline.watch(Watched {
            child: control,
            workspace_id: Uuid::from_u128(99),
            exit: tx,
            exits: exits.clone(),
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let with_inline = open_fds();
        assert_eq!(
            during, before,
            "20 watched processes added pidfds to this table"
        );
        assert!(
            with_inline > during,
            "the inline wait holds its pidfd here ({with_inline} vs {during})"
        );
        for (pid, _) in &waits {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(control_pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        for (_, mut rx) in waits {
            let code = exit_of(&mut rx, "exit seen").await;
            assert_eq!(code, Some(None), "killed by a signal: no code");
        }
        let code = exit_of(&mut inline_rx, "inline exit seen").await;
        assert_eq!(code, Some(None));
        let mut ids = std::collections::HashSet::new();
        while ids.len() < 21 {
            ids.insert(heard.recv().await.unwrap());
        }
        assert!(ids.contains(&Uuid::from_u128(99)));
    }
}
