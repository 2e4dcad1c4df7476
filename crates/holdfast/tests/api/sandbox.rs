//! `--sandbox bwrap`: each workspace runs inside bubblewrap and sees of the
//! host only /usr, /etc and its own data dir. Outside CI these tests skip
//! (saying why) when bubblewrap is not installed; under `CI=true` its
//! absence is a failure.

use crate::helpers::{TestApp, id_of, read_lines, wait_for_pid};
use serde_json::json;
use std::path::Path;

fn have_bwrap() -> bool {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join("bwrap").is_file());
    if !found {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "CI=true but bubblewrap (bwrap) is not installed: the sandbox tests cannot run"
        );
        eprintln!("skipping: the sandbox tests need bubblewrap (apt-get install bubblewrap)");
    }
    found
}

#[tokio::test]
async fn a_sandboxed_workspace_sees_only_its_own_data_and_keeps_it() {
    if !have_bwrap() {
        return;
    }
    let mut app = TestApp::spawn_with(&["--sandbox", "bwrap"]).await;
    // A file of the host's, in the server's data dir beside the volumes.
    let secret = app.platform_data_dir().join("host-secret");
    std::fs::write(&secret, "not for workspaces").unwrap();
    let script = format!(
        "echo started >> data.txt; \
         if cat {secret} > /dev/null 2>&1; then echo visible > probe; else echo hidden > probe; fi; \
         ls / > root.txt; echo $$ > pid; exec sleep 600",
        secret = secret.display()
    );
    let ws = app
        .create_online_workspace(
            &json!({"name": "boxed", "runtime": {"command": ["sh", "-c", script]}}),
        )
        .await;
    let id = id_of(&ws);
    let volume = app.volume_dir(&id);
    // Inside its own pid namespace the pid is small and repeats across
    // starts; only the file's appearance is waited for.
    wait_for_pid(&volume).await;
    assert_eq!(
        read_lines(&volume.join("probe")),
        ["hidden"],
        "the server's files are out of reach"
    );
    let root = read_lines(&volume.join("root.txt"));
    assert!(
        !root.iter().any(|e| e == "root" || e == "home"),
        "a minimal root: {root:?}"
    );

    // Persist data survives a restart inside the sandbox too.
    app.restart_workspace(&id).await.expect_status(200);
    let lines = crate::helpers::eventually("the restarted workspace's line", || async {
        let lines = read_lines(&volume.join("data.txt"));
        (lines.len() >= 2).then_some(lines)
    })
    .await;
    assert_eq!(lines, ["started", "started"]);

    // The built-in runtime works in it: it registers and remembers.
    let rt = app
        .create_workspace(&json!({"name": "boxed-runtime"}))
        .await
        .expect_status(201);
    let rt = id_of(&rt);
    app.wait_online(&rt).await;
    let reply = app.say(&rt, "hello from the box").await;
    assert!(reply.contains("0 earlier"), "{reply}");
    assert!(
        Path::new(&app.volume_dir(&rt))
            .join("memory/messages.jsonl")
            .exists()
    );
    app.restart_server().await;
    app.wait_online(&rt).await;
    let reply = app.say(&rt, "still there?").await;
    assert!(reply.contains("1 earlier"), "{reply}");
}
