//! Workspaces are untrusted code. A hostile probe tries to reach what is not
//! its own, and must fail in the default sandbox, while the same probe with
//! `--sandbox none` finds everything (the positive control that shows the
//! probe can see a leak). Also: containment of `setsid` and double-forked
//! processes, the tier's process limit, a tree swapped for links while it
//! is exported, a 10,000-level tree, and the quota.
//!
//! Tests that need bubblewrap or writable cgroups skip outside CI (saying
//! why) and fail under `CI=true` when either is missing.

use crate::helpers::{
    SHORT_GRACES, TestApp, container_mode, eventually, id_of, read_lines,
    skip_on_container_backend, wait_for_pid, workspace_processes,
};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn have_bwrap() -> bool {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join("bwrap").is_file());
    if !found {
        assert!(!ci(), "CI=true but bubblewrap (bwrap) is not installed");
        eprintln!("skipping: needs bubblewrap (apt-get install bubblewrap)");
    }
    found
}

/// Whether workspaces of `ws` got their limits; under CI they must.
fn limits_enforced(ws: &Value) -> bool {
    let enforced = ws["limits"] == "enforced";
    if !enforced {
        assert!(!ci(), "CI=true but limits are not enforced: {ws}");
        eprintln!(
            "skipping: cgroups cannot be written here ({})",
            ws["limits"]
        );
    }
    enforced
}

const PROBE: &str = r#"
check() { if eval "$2" >/dev/null 2>&1; then echo "$1 found"; else echo "$1 hidden"; fi; }
{
check sibling 'grep -q sibling-canary "$SIBLING/canary"'
check token 'grep -q . "$DATA/admin-token"'
check store 'head -c 16 "$DATA/holdfast.db" | grep -q SQLite'
check shadow 'grep -q "^root:" /etc/shadow'
check passwd 'grep -q "^root:" /etc/passwd'
check environ 'tr "\0" "\n" < /proc/$SERVER/environ | grep -q "^HOLDFAST_SANDBOX="'
check init 'tr "\0" "\n" < /proc/1/environ | grep -q "^HOLDFAST_SANDBOX="'
check signal 'kill -0 $VICTIM'
check cp_root 'env | grep -q HOLDFAST_CP_ROOT'
} > probe.txt
echo $$ > pid
exec sleep 600
"#;

/// Runs the probe in a server started with `sandbox`, beside a sibling
/// whose data holds a canary; returns the probe's findings and its JSON.
async fn probe(sandbox: &str) -> (Vec<String>, Value, bool) {
    let app = TestApp::spawn_with(&["--sandbox", sandbox]).await;
    let sibling = app
        .create_online_workspace(&json!({
            "name": "sibling",
            "runtime": {"command": ["sh", "-c", "echo sibling-canary > canary; exec sleep 600"]},
        }))
        .await;
    let sibling_dir = app.volume_dir(&id_of(&sibling));
    eventually("the sibling's canary", || {
        let f = sibling_dir.join("canary");
        async move { f.exists().then_some(()) }
    })
    .await;
    // The server's admin token where the server keeps it (this test's
    // server got it as a flag, so the file is planted).
    let token = app.platform_data_dir().join("admin-token");
    std::fs::write(&token, "hfa_canary_admin_token\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // A host process the probe must not be able to signal.
    let mut victim = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("spawn a host process");
    let ws = app
        .create_online_workspace(&json!({
            "name": "probe",
            "runtime": {"command": ["sh", "-c", PROBE]},
            "env": {
                "SIBLING": sibling_dir.display().to_string(),
                "DATA": app.platform_data_dir().display().to_string(),
                "SERVER": app.server_pid().to_string(),
                "VICTIM": victim.id().to_string(),
            },
        }))
        .await;
    let dir = app.volume_dir(&id_of(&ws));
    wait_for_pid(&dir).await;
    let lines = read_lines(&dir.join("probe.txt"));
    let _ = victim.kill();
    let _ = victim.wait();
    let ws = app.workspace(&id_of(&ws)).await;
    // On PostgreSQL there is no store file to find.
    let store_file = app.platform_data_dir().join("holdfast.db").exists();
    (lines, ws, store_file)
}

#[tokio::test]
async fn the_default_sandbox_hides_the_host_and_without_it_the_probe_finds_everything() {
    if skip_on_container_backend(
        "it compares bubblewrap with no sandbox; a container is neither (containers.rs checks its confinement)",
    ) {
        return;
    }
    if !have_bwrap() {
        return;
    }
    let (inside, ws, _) = probe("auto").await;
    assert_eq!(ws["isolation"], "bwrap", "{ws}");
    assert_eq!(
        inside,
        [
            "sibling hidden",
            "token hidden",
            "store hidden",
            "shadow hidden",
            "passwd hidden",
            "environ hidden",
            "init hidden",
            "signal hidden",
            "cp_root hidden",
        ],
        "in the sandbox nothing of the host's is reachable"
    );

    // The positive control: the same probe, unsandboxed, finds the
    // canaries, so a "hidden" above is the sandbox's doing.
    let (outside, ws, store_file) = probe("none").await;
    assert_eq!(ws["isolation"], "none", "{ws}");
    let root = rustix::process::getuid().is_root();
    let expected = vec![
        "sibling found",
        "token found",
        if store_file {
            "store found"
        } else {
            "store hidden"
        },
        if root {
            "shadow found"
        } else {
            "shadow hidden"
        },
        "passwd found",
        "environ found",
        // PID 1 of the host is init, whose environment is not the server's.
        "init hidden",
        "signal found",
        // Not even an unsandboxed workspace is told where the server keeps
        // its data.
        "cp_root hidden",
    ];
    assert_eq!(outside, expected);
}

#[tokio::test]
async fn a_sandboxed_workspace_gets_only_its_own_environment_and_descriptors() {
    if skip_on_container_backend(
        "the engine adds variables of its own (container, HOSTNAME) to a container's environment",
    ) {
        return;
    }
    if !have_bwrap() {
        return;
    }
    let app = TestApp::spawn_with(&["--sandbox", "bwrap"]).await;
    let ws = app
        .create_online_workspace(&json!({
            "name": "env",
            "runtime": {"command": ["sh", "-c",
                "env | sort > env.txt; ls /proc/self/fd > fds.txt; ls / > root.txt; \
                 touch /usr/x 2>/dev/null && echo usr-writable > ro.txt; \
                 touch /x 2>/dev/null && echo root-writable >> ro.txt; \
                 touch /tmp/x && echo tmp-writable >> ro.txt; \
                 echo $$ > pid; exec sleep 600"]},
            "env": {"MINE": "yes"},
        }))
        .await;
    let dir = app.volume_dir(&id_of(&ws));
    wait_for_pid(&dir).await;
    let env = read_lines(&dir.join("env.txt"));
    let names: Vec<&str> = env.iter().filter_map(|l| l.split('=').next()).collect();
    assert_eq!(
        names,
        [
            "HOLDFAST_DATA_DIR",
            "HOLDFAST_INSTANCE_ID",
            "HOLDFAST_PLATFORM_URL",
            "HOLDFAST_TOKEN",
            "HOLDFAST_WORKSPACE_ID",
            "HOME",
            "MINE",
            "PATH",
            "PWD",
            "TMPDIR",
        ],
        "nothing of the server's environment: {env:?}"
    );
    assert!(
        env.contains(&"HOLDFAST_DATA_DIR=/data".to_owned()),
        "{env:?}"
    );
    // 0, 1, 2 and the descriptor `ls` reads /proc/self/fd through.
    assert_eq!(read_lines(&dir.join("fds.txt")), ["0", "1", "2", "3"]);
    assert_eq!(read_lines(&dir.join("ro.txt")), ["tmp-writable"]);
    let root = read_lines(&dir.join("root.txt"));
    assert!(
        !root
            .iter()
            .any(|e| e == "root" || e == "home" || e == "var"),
        "{root:?}"
    );
}

/// A workspace that leaves its process group in two ways, then a stop.
const ESCAPER: &str = "setsid sh -c 'while :; do date +%s%N > escaped-setsid; sleep 0.05; done' & \
     sh -c '(while :; do date +%s%N > escaped-fork; sleep 0.05; done) &' ; \
     echo $$ > pid; exec sleep 600";

async fn stop_ends_escapes(sandbox: &str) {
    let app = TestApp::spawn_with(&["--sandbox", sandbox]).await;
    let ws = app
        .create_online_workspace(
            &json!({"name": "escaper", "runtime": {"command": ["sh", "-c", ESCAPER]}}),
        )
        .await;
    let id = id_of(&ws);
    if ws["limits"] != "enforced" && sandbox == "none" {
        // Without cgroups only a pid namespace could catch them.
        assert!(!ci(), "CI=true but cgroups are not writable: {ws}");
        eprintln!("skipping: no cgroups here, so nothing contains an unsandboxed setsid");
        return;
    }
    let dir = app.volume_dir(&id);
    for f in ["escaped-setsid", "escaped-fork"] {
        let path = dir.join(f);
        eventually(&format!("{f} to be written"), || {
            let path = path.clone();
            async move { path.exists().then_some(()) }
        })
        .await;
    }
    // The control: the escapers really left the leader's process group, so
    // a kill of that group alone would miss them.
    let pids = workspace_processes(&id);
    let groups: std::collections::BTreeSet<i32> = pids.iter().filter_map(|p| pgid(*p)).collect();
    assert!(
        groups.len() >= 2,
        "the escapers are in other groups: {groups:?}"
    );

    app.pause_workspace(&id).await.expect_status(200);
    app.wait_status(&id, "paused").await;
    eventually("every process of the workspace to be gone", || {
        let id = id.clone();
        async move { workspace_processes(&id).is_empty().then_some(()) }
    })
    .await;
    let before: Vec<String> = ["escaped-setsid", "escaped-fork"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_default())
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after: Vec<String> = ["escaped-setsid", "escaped-fork"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_default())
        .collect();
    assert_eq!(before, after, "nothing writes after the stop");
}

fn pgid(pid: u32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

#[tokio::test]
async fn a_stop_ends_setsid_and_double_forked_processes_unsandboxed() {
    stop_ends_escapes("none").await;
}

#[tokio::test]
async fn a_stop_ends_setsid_and_double_forked_processes_in_the_sandbox() {
    if !have_bwrap() {
        return;
    }
    stop_ends_escapes("bwrap").await;
}

/// Starts as many background sleeps as it may (up to 300) and records how
/// many started.
/// The loop runs in a subshell: a shell whose fork fails may give up, and
/// the workspace itself must keep running.
const FORKER: &str = "echo $$ > pid; \
     ( i=0; while [ $i -lt 300 ]; do sleep 600 & i=$((i+1)); done ) 2>/dev/null; \
     echo done > forked; exec sleep 600";

#[tokio::test]
async fn the_tier_caps_how_many_processes_a_workspace_runs() {
    let app = TestApp::spawn_with(&["--sandbox", "none"]).await;
    let small = app
        .create_online_workspace(
            &json!({"name": "small", "tier": 1, "runtime": {"command": ["sh", "-c", FORKER]}}),
        )
        .await;
    if !limits_enforced(&small) {
        return;
    }
    // The control: a tier with room for them all runs them all.
    let big = app
        .create_online_workspace(
            &json!({"name": "big", "tier": 4, "runtime": {"command": ["sh", "-c", FORKER]}}),
        )
        .await;
    for ws in [&small, &big] {
        let forked = app.volume_dir(&id_of(ws)).join("forked");
        eventually("the forks to be done", || {
            let forked = forked.clone();
            async move { forked.exists().then_some(()) }
        })
        .await;
    }
    let small_n = workspace_processes(&id_of(&small)).len();
    let big_n = workspace_processes(&id_of(&big)).len();
    assert!(
        small_n <= 64,
        "tier 1 runs at most 64 processes, ran {small_n}"
    );
    assert!(big_n > 200, "tier 4 ran them all: {big_n}");
    // The workspace itself is fine: limits contain, they do not kill.
    assert_eq!(app.workspace(&id_of(&small)).await["status"], "online");
}

#[tokio::test]
async fn exports_while_the_workspace_swaps_directories_for_links_never_leave_its_data() {
    let app = TestApp::spawn_with(&["--sandbox", "none"]).await;
    let outside = tempfile::tempdir().expect("a dir outside");
    let marker = format!("outside-secret-{}", uuid::Uuid::new_v4());
    std::fs::write(outside.path().join("secret.txt"), &marker).unwrap();
    std::fs::create_dir(outside.path().join("sub")).unwrap();
    std::fs::write(outside.path().join("sub/secret.txt"), &marker).unwrap();
    // `d` flips between a real directory and a link to the outside as fast
    // as the shell can rename.
    let script = "mkdir -p d/sub; echo mine > d/sub/secret.txt; echo mine > d/secret.txt; \
         echo $$ > pid; \
         while :; do mv d d.real; ln -s \"$OUTSIDE\" d; mv d d.link; mv d.real d; \
         mv d.link d2 2>/dev/null; rm -f d2; done";
    let ws = app
        .create_online_workspace(&json!({
            "name": "swapper",
            "runtime": {"command": ["sh", "-c", script]},
            "env": {"OUTSIDE": outside.path().display().to_string()},
        }))
        .await;
    let id = id_of(&ws);
    let dir = app.volume_dir(&id);
    wait_for_pid(&dir).await;
    // The control: the workspace really presents a link to the outside, so
    // a reader that follows links would find the secret.
    let seen_link = eventually("the link to appear", || {
        let dir = dir.clone();
        async move {
            std::fs::read_link(dir.join("d"))
                .or_else(|_| std::fs::read_link(dir.join("d.link")))
                .ok()
        }
    })
    .await;
    assert_eq!(seen_link, outside.path());
    let mut exported = 0;
    for _ in 0..30 {
        // A download that broke off (an archive with fewer entries than the
        // data had a moment before, on the container backend) is loud, and
        // leaks nothing either.
        let Ok(export) = app.try_export_data(&id).await else {
            continue;
        };
        if export.status.as_u16() != 200 {
            continue;
        }
        let Ok(entries) = std::panic::catch_unwind(|| export.expect_archive()) else {
            // A stream cut mid-way by an entry that vanished is loud, and
            // leaks nothing either.
            continue;
        };
        exported += 1;
        for e in &entries {
            assert!(
                !String::from_utf8_lossy(&e.content).contains(&marker),
                "an export held the outside secret through {}",
                e.path
            );
        }
    }
    assert!(exported > 0, "at least some exports completed");
}

/// Makes a chain of `depth` directories under `root` with a file at the
/// bottom, through handles (the path is far past PATH_MAX).
fn deep_tree(root: &Path, depth: usize) {
    use rustix::fs::{Mode, OFlags};
    let mut fd = rustix::fs::open(root, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
    for _ in 0..depth {
        rustix::fs::mkdirat(&fd, "a", Mode::RWXU).unwrap();
        fd = rustix::fs::openat(&fd, "a", OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty())
            .unwrap();
    }
    let f = rustix::fs::openat(
        &fd,
        "leaf.txt",
        OFlags::CREATE | OFlags::WRONLY,
        Mode::RUSR | Mode::WUSR,
    )
    .unwrap();
    rustix::io::write(&f, b"bottom").unwrap();
}

#[tokio::test]
async fn a_10000_level_tree_is_exported_whole_or_refused_and_its_erasure_completes_after_a_crash() {
    let mut app = TestApp::spawn_with(SHORT_GRACES).await;
    let ws = app
        .create_online_workspace(&json!({
            "name": "deep",
            "runtime": {"command": ["sh", "-c", "echo $$ > pid; exec sleep 600"]},
            "compute": {"data_persistence": "persist"},
        }))
        .await;
    let id = id_of(&ws);
    let dir = app.volume_dir(&id);
    wait_for_pid(&dir).await;
    deep_tree(&dir, 10_000);

    let export = app.export_data(&id).await;
    if container_mode() {
        // The engine's archive API cannot read paths of 4,096 bytes or more
        // (Podman's archive would silently stop near level 2,047): the
        // export is refused before it starts, and says why.
        assert_eq!(
            export.status.as_u16(),
            409,
            "{}",
            String::from_utf8_lossy(&export.bytes)
        );
        let body: serde_json::Value = serde_json::from_slice(&export.bytes).unwrap();
        assert_eq!(body["code"], "export_refused", "{body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("10001 levels") && error.contains("archive API"),
            "{body}"
        );
    } else {
        let entries = export.expect_archive();
        let dirs = entries.iter().filter(|e| e.path.starts_with("a")).count();
        assert_eq!(dirs, 10_001, "every level and the leaf");
        let leaf = entries
            .iter()
            .find(|e| e.path.ends_with("leaf.txt"))
            .expect("the leaf is in the export");
        assert_eq!(leaf.path.len(), 2 * 10_000 + "leaf.txt".len());
        assert_eq!(leaf.content, b"bottom");
    }

    // Delete with erase, then crash the erase half-way: the next start
    // finishes it.
    app.delete_workspace(&id)
        .confirm_name("deep")
        .erase_data()
        .send()
        .await
        .expect_status(200);
    app.wait_sweep_plans(&id, "erase").await;
    app.crash_and_restart_control_plane_with_env(&[("HOLDFAST_FAILPOINTS", "erase.mid")])
        .await;
    app.expect_control_plane_abort("erase.mid").await;
    app.start_control_plane_again_without_env().await;
    // Removing 10,000 directories is bound by the disk (`rm -rf` of the same
    // tree takes seconds here too): wait longer than the usual poll.
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let record = loop {
        let v = app.volume(&id).await;
        if v["state"] == "erased" {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "not erased: {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(record["bytes_erased"].as_i64() >= Some(6), "{record}");
    assert!(!dir.exists());
    let trash: PathBuf = app.cp_data_dir().join("trash");
    let left = std::fs::read_dir(&trash).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "nothing is left in the trash");
}

#[tokio::test]
async fn a_volume_over_its_quota_degrades_the_workspace_and_keeps_its_data() {
    if skip_on_container_backend(
        "it plants a large file through the host path of a volume and waits on one usage pass; sizes go through the engine there",
    ) {
        return;
    }
    let app = TestApp::spawn_with(&["--usage-interval", "200ms"]).await;
    let ws = app
        .create_online_workspace(&json!({
            "name": "hoarder",
            "runtime": {"command": ["sh", "-c", "echo keep > keep.txt; echo $$ > pid; exec sleep 600"]},
            "compute": {"data_persistence": "persist", "volume": {"size_gb": 1}},
        }))
        .await;
    let id = id_of(&ws);
    let dir = app.volume_dir(&id);
    wait_for_pid(&dir).await;
    assert_eq!(ws["data"]["over_quota"], false, "{ws}");
    let mut events = app.subscribe_events().await;
    // A sparse 2 GB file: over the 1 GB quota without using the disk.
    let big = std::fs::File::create(dir.join("big")).unwrap();
    big.set_len(2_000_000_000).unwrap();
    drop(big);
    app.wait_status(&id, "degraded").await;
    let ws = app.workspace(&id).await;
    assert_eq!(ws["data"]["over_quota"], true, "{ws}");
    assert!(ws["data"]["bytes"].as_i64() > Some(1_000_000_000), "{ws}");
    let kinds = events.types_for_until(&id, "VOLUME_OVER_QUOTA").await;
    assert!(kinds.iter().any(|k| k == "VOLUME_OVER_QUOTA"), "{kinds:?}");
    // Nothing was deleted for it.
    assert!(dir.join("big").exists() && dir.join("keep.txt").exists());
    std::fs::remove_file(dir.join("big")).unwrap();
    app.wait_status(&id, "online").await;
    assert_eq!(app.workspace(&id).await["data"]["over_quota"], false);
}
