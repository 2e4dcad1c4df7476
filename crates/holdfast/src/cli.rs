//! The CLI: a client of the platform API. URL and token come from flags or
//! `HOLDFAST_URL` / `HOLDFAST_TOKEN` (default: `http://127.0.0.1:7420` and
//! the token in `./.holdfast/admin-token`). Tables by default, `--json` for
//! scripts.

mod progress;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use progress::{Progress, Total};
use serde_json::{Value, json};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;

#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// The platform's URL.
    #[arg(
        long,
        global = true,
        env = "HOLDFAST_URL",
        default_value = "http://127.0.0.1:7420"
    )]
    url: String,
    /// An API token (default: ./.holdfast/admin-token).
    #[arg(long, global = true, env = "HOLDFAST_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of a table (the same as `-o json`).
    #[arg(long, global = true)]
    json: bool,
    /// Leave the header line out of tables (for scripts).
    #[arg(long, global = true)]
    no_headers: bool,
}

/// How a command prints what it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// An aligned table of the main columns.
    Table,
    /// The table with every column.
    Wide,
    /// The API's JSON, as it answered.
    Json,
    /// The same as YAML.
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum WsCommand {
    /// List workspaces (live ones; --all adds removed ones).
    List {
        /// Include removed workspaces.
        #[arg(long)]
        all: bool,
        /// table (default), wide, json or yaml.
        #[arg(short = 'o', long = "output", value_enum)]
        output: Option<Output>,
    },
    /// Create a workspace.
    Create {
        /// Its name (1 to 64 characters).
        name: String,
        /// What it is for (at most 256 characters).
        #[arg(long)]
        role: Option<String>,
        /// Its parent workspace's id or name.
        #[arg(long, value_name = "ID")]
        parent: Option<String>,
        /// 1 to 4: its memory, process and CPU limits (default 2).
        #[arg(long)]
        tier: Option<u8>,
        /// Saved data: persist, ephemeral or auto.
        #[arg(long, default_value = "auto")]
        data: String,
        /// KEY=VALUE, repeatable.
        #[arg(long = "env")]
        env: Vec<String>,
        /// A clone: start its data as this snapshot's (of the same org).
        #[arg(long, value_name = "SNAPSHOT_ID")]
        from_snapshot: Option<String>,
        /// Run this command instead of the built-in runtime (after `--`).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Show one workspace (removed ones too).
    #[command(alias = "show")]
    Get {
        /// The workspace's id or name.
        id: String,
        /// json (default), yaml, table or wide.
        #[arg(short = 'o', long = "output", value_enum)]
        output: Option<Output>,
    },
    /// Change a workspace (applies at its next start).
    Patch {
        /// The workspace's id or name.
        id: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// A new role (`""` clears it).
        #[arg(long)]
        role: Option<String>,
        /// A new tier, 1 to 4.
        #[arg(long)]
        tier: Option<u8>,
        /// Saved data: persist, ephemeral or auto.
        #[arg(long)]
        data: Option<String>,
    },
    /// Stop (never erasing data) and start again.
    Restart {
        /// The workspace's id or name.
        id: String,
    },
    /// Stop it (never erasing data) until resumed.
    Pause {
        /// The workspace's id or name.
        id: String,
        /// Also pause its live descendants (needed when it has any).
        #[arg(long)]
        cascade: bool,
    },
    /// Start a paused or hibernated workspace again.
    Resume {
        /// The workspace's id or name.
        id: String,
        /// Also resume its descendants.
        #[arg(long)]
        cascade: bool,
    },
    /// Stop it (never erasing data); a message wakes it.
    Hibernate {
        /// The workspace's id or name.
        id: String,
        /// Also hibernate its live descendants (needed when it has any).
        #[arg(long)]
        cascade: bool,
    },
    /// Start a hibernated workspace again.
    Wake {
        /// The workspace's id or name.
        id: String,
    },
    /// Delete a workspace. Its data is kept for the retention grace unless
    /// --erase is given (then it is erased after the erase grace).
    Delete {
        /// The workspace's id or name.
        id: String,
        /// Also erase its saved data (restorable during the erase grace).
        #[arg(long)]
        erase: bool,
        /// Also delete its live descendants.
        #[arg(long)]
        cascade: bool,
        /// Confirm without a prompt by giving the workspace's exact name.
        #[arg(long, value_name = "NAME")]
        yes: Option<String>,
    },
    /// Bring back a deleted workspace with its data.
    Restore {
        /// The workspace's id or name.
        id: String,
    },
    /// Print the tail of the workspace's log (its stdout and stderr).
    Logs {
        /// The workspace's id or name.
        id: String,
        /// Keep printing what it writes (Ctrl-C ends it).
        #[arg(short = 'f', long)]
        follow: bool,
        /// How many bytes from the end (default 65536).
        #[arg(long)]
        tail: Option<u64>,
    },
    /// A live table of the running workspaces, largest saved data first:
    /// status, uptime, size, tier, isolation and limits (like top).
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
        interval: u64,
        /// Print the table once and exit (what it does when stdout is not a
        /// terminal).
        #[arg(long)]
        once: bool,
    },
    /// Download the workspace's data as a .tar.gz.
    Export {
        /// The workspace's id or name.
        id: String,
        /// The file to write (written as FILE.partial, renamed when complete).
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an org (admin).
    Create {
        /// Its name (unique).
        name: String,
    },
    /// List orgs (admin).
    List,
    /// Mint a token for an org (admin); it is shown once, alone on stdout.
    Token {
        /// The org's id.
        org_id: String,
    },
    /// Import a tree of workspaces from a YAML (or .json) file: create what
    /// is missing, change what differs (at each workspace's next start).
    Import {
        /// The document: YAML, or JSON when its name ends in `.json`.
        file: PathBuf,
        /// Also remove the workspaces of the tree that the file no longer
        /// names. Their saved data is kept for the retention grace, and a
        /// restore brings them back; nothing is erased.
        #[arg(long)]
        reconcile: bool,
        /// Show the plan without changing anything.
        #[arg(long)]
        dry_run: bool,
        /// Admin: the org to import into (default: the default org).
        #[arg(long)]
        org: Option<String>,
    },
    /// Print the org's live tree as YAML (importing it changes nothing).
    Export {
        /// Admin: the org to export (default: the default org).
        #[arg(long)]
        org: Option<String>,
        /// The top-level workspace whose tree to export, when there are several.
        #[arg(long)]
        root: Option<String>,
        /// Write to this file instead of stdout.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapCommand {
    /// Take a snapshot of a workspace's data now (frozen while it runs).
    Create {
        /// The workspace's id or name.
        workspace: String,
        /// A label to find it by (at most 64 characters).
        #[arg(long)]
        label: Option<String>,
    },
    /// List a workspace's snapshots, newest first.
    List {
        /// The workspace's id or name.
        workspace: String,
    },
    /// Replace a workspace's data with a snapshot's and restart it; the
    /// data as it was is kept first as a `before-rollback` snapshot.
    Rollback {
        /// The workspace's id or name.
        workspace: String,
        /// The snapshot to roll back to (one of this workspace's).
        snapshot: String,
    },
    /// Download a snapshot's content as a .tar.gz.
    Export {
        /// The snapshot's id.
        snapshot: String,
        /// Where to write it (default holdfast-snapshot-<id>.tar.gz).
        #[arg(long, short = 'O')]
        output: Option<std::path::PathBuf>,
    },
    /// Delete a snapshot (409 while its workspace is under a legal hold).
    Rm {
        /// The snapshot's id.
        snapshot: String,
        /// Confirm without a prompt by giving its workspace's exact name.
        #[arg(long, value_name = "NAME")]
        yes: Option<String>,
    },
}

const SNAP_COLUMNS: &[&str] = &[
    "id",
    "at",
    "label",
    "state",
    "files",
    "bytes",
    "new_bytes",
    "consistency",
];

pub async fn snap(conn: Conn, cmd: SnapCommand) -> anyhow::Result<()> {
    let c = Client::new(&conn)?;
    match cmd {
        SnapCommand::Create { workspace, label } => {
            let id = c.resolve(&workspace).await?;
            let body = match label {
                Some(l) => json!({ "label": l }),
                None => json!({}),
            };
            let v = c.post(&format!("/workspaces/{id}/snapshots"), body).await?;
            c.print(&v, SNAP_COLUMNS);
        }
        SnapCommand::List { workspace } => {
            let id = c.resolve(&workspace).await?;
            let v = c.get(&format!("/workspaces/{id}/snapshots")).await?;
            c.print(&v, SNAP_COLUMNS);
        }
        SnapCommand::Rollback {
            workspace,
            snapshot,
        } => {
            let id = c.resolve(&workspace).await?;
            let v = c
                .post(
                    &format!("/workspaces/{id}/rollback"),
                    json!({ "snapshot_id": snapshot }),
                )
                .await?;
            if c.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!(
                    "rolled back to {}; the data before is kept as snapshot {} (before-rollback)",
                    cell(&v["restored"], "id"),
                    cell(&v["before_rollback"], "id")
                );
            }
        }
        SnapCommand::Export { snapshot, output } => {
            let output =
                output.unwrap_or_else(|| format!("holdfast-snapshot-{snapshot}.tar.gz").into());
            let total = if std::io::stderr().is_terminal() {
                // The snapshot's size: an estimate of the compressed archive.
                estimate(c.get(&format!("/snapshots/{snapshot}")).await.ok(), "bytes")
            } else {
                Total::Unknown
            };
            download(&c, &format!("/snapshots/{snapshot}/export"), &output, total).await?;
        }
        SnapCommand::Rm { snapshot, yes } => {
            let name = match yes {
                Some(n) => n,
                None => {
                    let s = c.get(&format!("/snapshots/{snapshot}")).await?;
                    let ws = c
                        .get(&format!("/workspaces/{}", cell(&s, "workspace_id")))
                        .await?;
                    let name = ws["name"].as_str().unwrap_or_default().to_owned();
                    if !std::io::stdin().is_terminal() {
                        bail!("refusing to delete without confirmation: pass --yes {name:?}");
                    }
                    eprint!("Type the workspace name ({name}) to delete this snapshot: ");
                    std::io::stderr().flush()?;
                    let mut typed = String::new();
                    std::io::stdin().read_line(&mut typed)?;
                    typed.trim_end_matches(['\n', '\r']).to_owned()
                }
            };
            let v = c
                .call(
                    c.req(reqwest::Method::DELETE, &format!("/snapshots/{snapshot}"))
                        .header("X-Confirm-Name", name),
                )
                .await?;
            c.print(&v["snapshot"], SNAP_COLUMNS);
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum HoldCommand {
    /// Place a legal hold (admin token): nothing of the workspace's data or
    /// snapshots can be erased, and its grace clocks stop, until released.
    Put {
        /// The workspace's id or name.
        workspace: String,
        /// Why (recorded in the audit log and shown in `data.hold`).
        #[arg(long)]
        reason: String,
    },
    /// Release a workspace's legal hold (admin token); its grace clocks run
    /// on from where they stood.
    Rm {
        /// The workspace's id or name.
        workspace: String,
    },
}

pub async fn hold(conn: Conn, cmd: HoldCommand) -> anyhow::Result<()> {
    let c = Client::new(&conn)?;
    let v = match cmd {
        HoldCommand::Put { workspace, reason } => {
            let id = c.resolve(&workspace).await?;
            c.call(
                c.req(reqwest::Method::PUT, &format!("/workspaces/{id}/hold"))
                    .json(&json!({ "reason": reason })),
            )
            .await?
        }
        HoldCommand::Rm { workspace } => {
            let id = c.resolve(&workspace).await?;
            c.call(c.req(reqwest::Method::DELETE, &format!("/workspaces/{id}/hold")))
                .await?
        }
    };
    if c.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        let name = v["name"].as_str().unwrap_or_default();
        match v["data"]["hold"].as_object() {
            Some(h) => println!(
                "{name}: under a legal hold since {} by {} ({})",
                h.get("since").and_then(Value::as_str).unwrap_or("?"),
                h.get("by").and_then(Value::as_str).unwrap_or("?"),
                h.get("reason").and_then(Value::as_str).unwrap_or("")
            ),
            None => println!("{name}: not under a legal hold"),
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum VolumesCommand {
    /// List volume records.
    List {
        /// Only volumes in this state: active, retained, erase_pending,
        /// erasing or erased.
        #[arg(long)]
        state: Option<String>,
    },
}

struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
    json: bool,
    no_headers: bool,
}

impl Client {
    fn new(conn: &Conn) -> anyhow::Result<Client> {
        let token = match &conn.token {
            Some(t) => t.clone(),
            None => std::fs::read_to_string(".holdfast/admin-token")
                .map(|s| s.trim().to_owned())
                .context("no token: pass --token, set HOLDFAST_TOKEN, or run where ./.holdfast/admin-token exists")?,
        };
        Ok(Client {
            http: reqwest::Client::new(),
            url: conn.url.trim_end_matches('/').to_owned(),
            token,
            json: conn.json,
            no_headers: conn.no_headers,
        })
    }

    /// The id of the workspace `arg` names: an id as it is, or a name,
    /// looked up among the workspaces this token sees (live ones first;
    /// removed ones when no live one has it, so that `restore NAME` works).
    /// Names are unique among siblings, not everywhere: a name that more
    /// than one workspace has is an error that lists them.
    async fn resolve(&self, arg: &str) -> anyhow::Result<String> {
        if holdfast_domain::parse_uuid(arg).is_some() {
            return Ok(arg.to_owned());
        }
        let all = self.get("/workspaces?include_removed=true").await?;
        let named: Vec<&Value> = all
            .as_array()
            .map(|a| a.iter().filter(|w| w["name"] == arg).collect())
            .unwrap_or_default();
        let live: Vec<&Value> = named
            .iter()
            .copied()
            .filter(|w| w["status"] != "removed")
            .collect();
        let pick = if live.is_empty() { named } else { live };
        match pick.as_slice() {
            [one] => Ok(one["id"].as_str().unwrap_or_default().to_owned()),
            [] => {
                bail!("no workspace named {arg:?} (give its id, or see `holdfast ws list --all`)")
            }
            many => {
                let ids: Vec<String> = many
                    .iter()
                    .map(|w| {
                        format!(
                            "{} (org {}, parent {})",
                            cell(w, "id"),
                            cell(w, "org_id"),
                            cell(w, "parent_id")
                        )
                    })
                    .collect();
                bail!(
                    "{} workspaces are named {arg:?}; give the id of one:\n  {}",
                    many.len(),
                    ids.join("\n  ")
                )
            }
        }
    }

    /// Prints `v` as asked: `output`, else `--json`, else `default`.
    fn show(&self, v: &Value, output: Option<Output>, default: Output) {
        let output = output.unwrap_or(if self.json { Output::Json } else { default });
        match output {
            Output::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
            Output::Yaml => print!("{}", to_yaml(v)),
            Output::Table => self.table(v, WS_COLUMNS),
            Output::Wide => self.table(v, WS_WIDE),
        }
    }

    fn table(&self, v: &Value, columns: &[&str]) {
        let rows: Vec<&Value> = match v {
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        print_table(&rows, columns, !self.no_headers);
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
    }

    async fn call(&self, rb: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = rb
            .send()
            .await
            .with_context(|| format!("reaching {}", self.url))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = body["error"].as_str().unwrap_or("request failed");
            let code = body["code"].as_str().unwrap_or("");
            bail!("{} {msg} ({code})", status.as_u16());
        }
        Ok(body)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(self.req(reqwest::Method::GET, path)).await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(self.req(reqwest::Method::POST, path).json(&body))
            .await
    }

    fn print(&self, v: &Value, columns: &[&str]) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
            return;
        }
        self.table(v, columns);
    }
}

fn cell(v: &Value, col: &str) -> String {
    if col == "runtime" {
        // A command as its words, the built-in runtime by its template.
        let rt = &v["runtime"];
        return match (rt["command"].as_array(), rt["template"].as_str()) {
            (Some(argv), _) => argv
                .iter()
                .map(|a| a.as_str().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(" "),
            (None, Some(t)) => t.to_owned(),
            (None, None) => "-".to_owned(),
        };
    }
    let mut cur = v;
    for part in col.split('.') {
        cur = &cur[part];
    }
    match cur {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

const TOP_COLUMNS: &[&str] = &[
    "name",
    "status",
    "uptime",
    "size",
    "tier",
    "isolation",
    "limits",
    "id",
];

/// The rows of `ws top`: every workspace that is not removed, largest saved
/// data first, with its uptime from `started_at` and its size for people.
fn top_rows(list: &Value, now: std::time::SystemTime) -> Vec<Value> {
    let mut items: Vec<&Value> = list
        .as_array()
        .map(|a| a.iter().filter(|w| w["status"] != "removed").collect())
        .unwrap_or_default();
    items.sort_by(|a, b| {
        b["data"]["bytes"]
            .as_i64()
            .cmp(&a["data"]["bytes"].as_i64())
            .then_with(|| a["name"].as_str().cmp(&b["name"].as_str()))
    });
    items
        .into_iter()
        .map(|w| {
            let uptime = w["started_at"]
                .as_str()
                .filter(|_| w["status"] == "online" || w["status"] == "degraded")
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                .and_then(|t| now.duration_since(t).ok())
                .map(short_duration)
                .unwrap_or_else(|| "-".to_owned());
            json!({
                "name": w["name"],
                "status": w["status"],
                "uptime": uptime,
                "size": human_bytes(w["data"]["bytes"].as_i64().unwrap_or(0)),
                "tier": w["tier"],
                "isolation": w["isolation"],
                "limits": w["limits"],
                "id": w["id"],
            })
        })
        .collect()
}

/// `45s`, `12m`, `3h05m`, `2d04h`.
fn short_duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..172_800 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Bytes for people: `0 B`, `12.3 KB`, `4.0 MB`.
fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n.max(0) as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{} B", n.max(0))
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn print_table(rows: &[&Value], columns: &[&str], headers: bool) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(r, c)).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |items: Vec<String>| {
        items
            .iter()
            .zip(&widths)
            .map(|(s, w)| format!("{s:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    if headers {
        println!(
            "{}",
            line(columns.iter().map(|c| c.to_uppercase()).collect())
        );
    }
    for r in cells {
        println!("{}", line(r));
    }
}

const WS_COLUMNS: &[&str] = &[
    "id",
    "name",
    "status",
    "data.mode",
    "data.state",
    "data.bytes",
];

/// Every column, for `-o wide`.
const WS_WIDE: &[&str] = &[
    "id",
    "name",
    "role",
    "status",
    "tier",
    "runtime",
    "data.mode",
    "data.state",
    "data.bytes",
    "isolation",
    "limits",
    "parent_id",
    "org_id",
];

/// `v` as a block-style YAML document. Strings are written double-quoted
/// with JSON's escapes, which YAML reads the same way, so no value can be
/// mistaken for another type or break the document.
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => yaml_map(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => yaml_list(&mut out, a, 0),
        scalar => {
            out.push_str(&yaml_scalar(scalar));
            out.push('\n');
        }
    }
    out
}

fn yaml_scalar(v: &Value) -> String {
    match v {
        Value::Object(_) => "{}".to_owned(),
        Value::Array(_) => "[]".to_owned(),
        other => other.to_string(),
    }
}

fn yaml_key(k: &str) -> String {
    let plain = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if plain {
        k.to_owned()
    } else {
        Value::String(k.to_owned()).to_string()
    }
}

fn is_block(v: &Value) -> bool {
    matches!(v, Value::Object(m) if !m.is_empty()) || matches!(v, Value::Array(a) if !a.is_empty())
}

fn yaml_map(out: &mut String, m: &serde_json::Map<String, Value>, indent: usize) {
    for (i, (k, v)) in m.iter().enumerate() {
        // The first key of a list item follows its "- ".
        if i > 0 || indent == 0 {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str(&yaml_key(k));
        out.push(':');
        yaml_value(out, v, indent + 2);
    }
}

fn yaml_list(out: &mut String, a: &[Value], indent: usize) {
    for (i, v) in a.iter().enumerate() {
        if i > 0 || indent == 0 {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str("- ");
        match v {
            Value::Object(m) if !m.is_empty() => yaml_map(out, m, indent + 2),
            Value::Array(inner) if !inner.is_empty() => yaml_list(out, inner, indent + 2),
            scalar => {
                out.push_str(&yaml_scalar(scalar));
                out.push('\n');
            }
        }
    }
}

fn yaml_value(out: &mut String, v: &Value, indent: usize) {
    if is_block(v) {
        out.push('\n');
        out.push_str(&" ".repeat(indent));
        match v {
            Value::Object(m) => yaml_map(out, m, indent),
            Value::Array(a) => yaml_list(out, a, indent),
            _ => unreachable!("is_block"),
        }
    } else {
        out.push(' ');
        out.push_str(&yaml_scalar(v));
        out.push('\n');
    }
}

fn compute_for(data: &str) -> anyhow::Result<Value> {
    Ok(match data {
        "auto" => json!({}),
        "persist" | "ephemeral" => json!({"data_persistence": data}),
        other => bail!("--data must be persist, ephemeral or auto, not {other:?}"),
    })
}

pub async fn ws(conn: Conn, cmd: WsCommand) -> anyhow::Result<()> {
    let c = Client::new(&conn)?;
    match cmd {
        WsCommand::List { all, output } => {
            let path = if all {
                "/workspaces?include_removed=true"
            } else {
                "/workspaces"
            };
            c.show(&c.get(path).await?, output, Output::Table);
        }
        WsCommand::Create {
            name,
            role,
            parent,
            tier,
            data,
            env,
            from_snapshot,
            command,
        } => {
            let mut body = json!({"name": name, "compute": compute_for(&data)?});
            if let Some(s) = from_snapshot {
                body["from_snapshot"] = json!(s);
            }
            if let Some(r) = role {
                body["role"] = json!(r);
            }
            if let Some(p) = parent {
                body["parent_id"] = json!(c.resolve(&p).await?);
            }
            if let Some(t) = tier {
                body["tier"] = json!(t);
            }
            if !command.is_empty() {
                body["runtime"] = json!({"command": command});
            }
            if !env.is_empty() {
                let mut map = serde_json::Map::new();
                for kv in env {
                    let (k, v) = kv
                        .split_once('=')
                        .with_context(|| format!("--env {kv:?} is not KEY=VALUE"))?;
                    map.insert(k.to_owned(), json!(v));
                }
                body["env"] = Value::Object(map);
            }
            c.print(&c.post("/workspaces", body).await?, WS_COLUMNS);
        }
        WsCommand::Get { id, output } => {
            let id = c.resolve(&id).await?;
            let v = c.get(&format!("/workspaces/{id}")).await?;
            c.show(&v, output, Output::Json);
        }
        WsCommand::Patch {
            id,
            name,
            role,
            tier,
            data,
        } => {
            let id = c.resolve(&id).await?;
            let mut body = json!({});
            if let Some(n) = name {
                body["name"] = json!(n);
            }
            if let Some(r) = role {
                body["role"] = json!(r);
            }
            if let Some(t) = tier {
                body["tier"] = json!(t);
            }
            if let Some(d) = data {
                body["compute"] = compute_for(&d)?;
            }
            let v = c
                .call(
                    c.req(reqwest::Method::PATCH, &format!("/workspaces/{id}"))
                        .json(&body),
                )
                .await?;
            c.print(&v, WS_COLUMNS);
        }
        WsCommand::Restart { id } => {
            let id = c.resolve(&id).await?;
            c.print(
                &c.post(&format!("/workspaces/{id}/restart"), json!({}))
                    .await?,
                WS_COLUMNS,
            );
        }
        WsCommand::Pause { id, cascade } => {
            let id = c.resolve(&id).await?;
            c.print(
                &c.post(
                    &format!("/workspaces/{id}/pause?cascade={cascade}"),
                    json!({}),
                )
                .await?,
                WS_COLUMNS,
            );
        }
        WsCommand::Resume { id, cascade } => {
            let id = c.resolve(&id).await?;
            c.print(
                &c.post(
                    &format!("/workspaces/{id}/resume?cascade={cascade}"),
                    json!({}),
                )
                .await?,
                WS_COLUMNS,
            );
        }
        WsCommand::Hibernate { id, cascade } => {
            let id = c.resolve(&id).await?;
            c.print(
                &c.post(
                    &format!("/workspaces/{id}/hibernate?cascade={cascade}"),
                    json!({}),
                )
                .await?,
                WS_COLUMNS,
            );
        }
        WsCommand::Wake { id } => {
            let id = c.resolve(&id).await?;
            c.print(
                &c.post(&format!("/workspaces/{id}/wake"), json!({})).await?,
                WS_COLUMNS,
            );
        }
        WsCommand::Delete {
            id,
            erase,
            cascade,
            yes,
        } => {
            let id = c.resolve(&id).await?;
            let name = match yes {
                Some(n) => n,
                None => {
                    let ws = c.get(&format!("/workspaces/{id}")).await?;
                    let name = ws["name"].as_str().unwrap_or_default().to_owned();
                    if !std::io::stdin().is_terminal() {
                        bail!("refusing to delete without confirmation: pass --yes {name:?}");
                    }
                    let what = if erase {
                        "delete it AND ERASE its saved data"
                    } else {
                        "delete it (data kept)"
                    };
                    eprint!("Type the workspace name ({name}) to {what}: ");
                    std::io::stderr().flush()?;
                    let mut typed = String::new();
                    std::io::stdin().read_line(&mut typed)?;
                    typed.trim_end_matches(['\n', '\r']).to_owned()
                }
            };
            let path = format!("/workspaces/{id}?confirm={cascade}&erase_data={erase}");
            let v = c
                .call(
                    c.req(reqwest::Method::DELETE, &path)
                        .header("X-Confirm-Name", name.as_str()),
                )
                .await?;
            if c.json {
                c.print(&v, &[]);
            } else {
                for line in delete_lines(&name, &v) {
                    println!("{line}");
                }
            }
        }
        WsCommand::Restore { id } => {
            let id = c.resolve(&id).await?;
            c.print(
                &c.post(&format!("/workspaces/{id}/restore"), json!({}))
                    .await?,
                WS_COLUMNS,
            );
        }
        WsCommand::Top { interval, once } => {
            let live = std::io::stdout().is_terminal() && !once;
            loop {
                let list = c.get("/workspaces").await?;
                let rows = top_rows(&list, std::time::SystemTime::now());
                let refs: Vec<&Value> = rows.iter().collect();
                if live {
                    // Clear the screen and go home, as top does.
                    print!("\x1b[2J\x1b[H");
                }
                print_table(&refs, TOP_COLUMNS, !c.no_headers);
                if !live {
                    return Ok(());
                }
                std::io::stdout().flush().ok();
                tokio::time::sleep(std::time::Duration::from_secs(interval)).await;
            }
        }
        WsCommand::Logs { id, follow, tail } => {
            let id = c.resolve(&id).await?;
            logs(&c, &id, follow, tail).await?
        }
        WsCommand::Export { id, output } => {
            let id = c.resolve(&id).await?;
            export(&c, &id, &output).await?
        }
    }
    Ok(())
}

/// Prints the log's tail; with `follow`, reads the server-sent events and
/// prints each line as it comes.
async fn logs(c: &Client, id: &str, follow: bool, tail: Option<u64>) -> anyhow::Result<()> {
    let mut path = format!("/workspaces/{id}/logs?follow={follow}");
    if let Some(t) = tail {
        path.push_str(&format!("&tail={t}"));
    }
    let mut resp = c
        .req(reqwest::Method::GET, &path)
        .send()
        .await
        .with_context(|| format!("reaching {}", c.url))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        bail!(
            "{} {} ({})",
            status.as_u16(),
            body["error"].as_str().unwrap_or("request failed"),
            body["code"].as_str().unwrap_or("")
        );
    }
    let mut out = std::io::stdout();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = resp.chunk().await.context("reading the log")? {
        if !follow {
            out.write_all(&chunk)?;
            continue;
        }
        pending.extend_from_slice(&chunk);
        while let Some(at) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=at).collect();
            if let Some(data) = line.strip_prefix(b"data: ".as_slice()) {
                out.write_all(data)?;
                out.flush()?;
            }
        }
    }
    Ok(())
}

/// What a delete did, in words: `cascade_deleted` counts every workspace
/// removed, the named one included, so a lone workspace answers 1, which
/// read as "one child deleted" to people; the sentence says it plainly.
/// Then what became of the saved data.
fn delete_lines(name: &str, v: &Value) -> Vec<String> {
    let removed = v["cascade_deleted"].as_u64().unwrap_or(1);
    let first = match removed.saturating_sub(1) {
        0 => format!("removed {name} (no child workspaces)"),
        1 => format!("removed {name} and 1 child workspace"),
        n => format!("removed {name} and {n} child workspaces"),
    };
    let until = v["restore_until"]
        .as_str()
        .unwrap_or("the end of its grace");
    let data = match v["data"].as_str() {
        Some("retained") => {
            format!("saved data kept until {until}; `holdfast ws restore {name}` brings it back")
        }
        Some("erase_pending") => format!(
            "saved data will be erased after {until}; `holdfast ws restore {name}` before then cancels it"
        ),
        Some("none") => "no saved data was kept (it did not keep any)".to_owned(),
        Some(other) => format!("saved data: {other}"),
        None => return vec![first],
    };
    vec![first, data]
}

/// Streams the export to a file (written beside it, then renamed, so a
/// broken download never looks complete), with a progress bar on stderr
/// when it is a terminal.
async fn export(c: &Client, id: &str, output: &std::path::Path) -> anyhow::Result<()> {
    let total = if std::io::stderr().is_terminal() {
        // The data's size as the server last measured it: the archive is
        // compressed, so this is an estimate (and the bar stops at 100 %).
        estimate(c.get(&format!("/workspaces/{id}")).await.ok(), "data")
    } else {
        Total::Unknown
    };
    download(c, &format!("/workspaces/{id}/data/export"), output, total).await
}

/// The expected size of an archive from a record's `bytes` (under `field`
/// when that is an object, as a workspace's `data` is); unknown when the
/// record could not be read or has no size.
fn estimate(record: Option<Value>, field: &str) -> Total {
    let Some(v) = record else {
        return Total::Unknown;
    };
    let bytes = if v[field].is_object() {
        v[field]["bytes"].as_u64()
    } else {
        v[field].as_u64()
    };
    match bytes {
        Some(b) if b > 0 => Total::Estimate(b),
        _ => Total::Unknown,
    }
}

/// Streams a `.tar.gz` answer of `path` into `output` (through a
/// `.partial` file renamed at the end), drawing progress against `total`.
async fn download(
    c: &Client,
    path: &str,
    output: &std::path::Path,
    total: Total,
) -> anyhow::Result<()> {
    let mut resp = c
        .req(reqwest::Method::GET, path)
        .send()
        .await
        .with_context(|| format!("reaching {}", c.url))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        bail!(
            "{} {}",
            status.as_u16(),
            body["error"].as_str().unwrap_or("export failed")
        );
    }
    let partial = output.with_extension("partial");
    let mut file = tokio::fs::File::create(&partial)
        .await
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut progress = Progress::new("exporting", total);
    progress.draw();
    let mut total = 0u64;
    let written = async {
        while let Some(chunk) = resp.chunk().await.context("download broke off")? {
            file.write_all(&chunk).await?;
            total += chunk.len() as u64;
            progress.advance(chunk.len() as u64);
        }
        file.sync_all().await?;
        anyhow::Ok(())
    }
    .await;
    // The bar's line is cleared whatever happened, so the message that
    // follows (the outcome or the error) starts on a clean line.
    progress.finish();
    written?;
    tokio::fs::rename(&partial, output).await?;
    eprintln!("exported {total} bytes to {}", output.display());
    Ok(())
}

/// POSTs a document, drawing a bar over the bytes sent when stderr is a
/// terminal (the server reads the whole document before it plans and
/// answers with the whole plan, so the upload is what there is to show).
async fn upload(
    c: &Client,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> anyhow::Result<Value> {
    let len = body.len() as u64;
    let progress = std::sync::Arc::new(std::sync::Mutex::new(Progress::new(
        "uploading",
        Total::Exact(len),
    )));
    if !progress.lock().expect("progress").drawn() {
        return c
            .call(
                c.req(reqwest::Method::POST, path)
                    .header(reqwest::header::CONTENT_TYPE, content_type)
                    .body(body),
            )
            .await;
    }
    progress.lock().expect("progress").draw();
    let chunks: Vec<Vec<u8>> = body.chunks(16 * 1024).map(<[u8]>::to_vec).collect();
    let seen = progress.clone();
    let stream = futures_util::stream::iter(chunks.into_iter().map(move |chunk| {
        let mut p = seen.lock().expect("progress");
        p.advance(chunk.len() as u64);
        if p.done() == len {
            // The last chunk: the bar reaches 100 % while the plan is made.
            p.draw();
        }
        Ok::<_, std::io::Error>(chunk)
    }));
    let answer = c
        .call(
            c.req(reqwest::Method::POST, path)
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .header(reqwest::header::CONTENT_LENGTH, len)
                .body(reqwest::Body::wrap_stream(stream)),
        )
        .await;
    progress.lock().expect("progress").finish();
    answer
}

pub async fn org(conn: Conn, cmd: OrgCommand) -> anyhow::Result<()> {
    let c = Client::new(&conn)?;
    match cmd {
        OrgCommand::Create { name } => c.print(
            &c.post("/orgs", json!({"name": name})).await?,
            &["id", "name", "created_at"],
        ),
        OrgCommand::List => c.print(
            &c.get("/orgs").await?,
            &["id", "name", "is_default", "created_at"],
        ),
        OrgCommand::Token { org_id } => {
            let v = c.post(&format!("/orgs/{org_id}/tokens"), json!({})).await?;
            if c.json {
                c.print(&v, &[]);
            } else {
                // Alone on stdout, so that scripts can capture it.
                println!("{}", v["token"].as_str().unwrap_or_default());
            }
        }
        OrgCommand::Import {
            file,
            reconcile,
            dry_run,
            org,
        } => {
            let body =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let content_type = if file.extension().is_some_and(|e| e == "json") {
                "application/json"
            } else {
                "application/yaml"
            };
            let mut query = Vec::new();
            if reconcile {
                query.push("mode=reconcile".to_owned());
            }
            if dry_run {
                query.push("dry_run=true".to_owned());
            }
            if let Some(org) = org {
                query.push(format!("org_id={}", encode(&org)));
            }
            let path = if query.is_empty() {
                "/org/import".to_owned()
            } else {
                format!("/org/import?{}", query.join("&"))
            };
            let answer = upload(&c, &path, content_type, body).await?;
            if c.json {
                c.print(&answer, &[]);
            } else {
                for line in plan_lines(&answer) {
                    println!("{line}");
                }
            }
        }
        OrgCommand::Export { org, root, output } => {
            let mut query = Vec::new();
            if let Some(org) = org {
                query.push(format!("org_id={}", encode(&org)));
            }
            if let Some(root) = root {
                query.push(format!("root={}", encode(&root)));
            }
            let path = if query.is_empty() {
                "/org/export".to_owned()
            } else {
                format!("/org/export?{}", query.join("&"))
            };
            let resp = c
                .req(reqwest::Method::GET, &path)
                .send()
                .await
                .with_context(|| format!("reaching {}", c.url))?;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            if !status.is_success() {
                let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let msg = body["error"].as_str().unwrap_or("request failed");
                let code = body["code"].as_str().unwrap_or("");
                bail!("{} {msg} ({code})", status.as_u16());
            }
            match output {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{text}"),
            }
        }
    }
    Ok(())
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// An import's answer as the plan a person reads: `+ create path`,
/// `~ update path (fields)`, `- remove path (data kept until …)`, then a
/// summary line.
fn plan_lines(answer: &Value) -> Vec<String> {
    let items = |key: &str| answer[key].as_array().cloned().unwrap_or_default();
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut out = Vec::new();
    let dry = answer["dry_run"] == true;
    for c in items("created") {
        out.push(format!("+ create {}", text(&c["path"])));
    }
    for u in items("updated") {
        let fields: Vec<String> = u["fields"]
            .as_array()
            .map(|f| f.iter().map(text).collect())
            .unwrap_or_default();
        out.push(format!(
            "~ update {} ({})",
            text(&u["path"]),
            fields.join(", ")
        ));
    }
    for r in items("removed") {
        let kept = match (r["data"].as_str(), r["restore_until"].as_str()) {
            (Some("retained"), Some(until)) => format!("data kept until {until}"),
            (Some("retained"), None) => "data kept for the retention grace".to_owned(),
            _ => "no saved data".to_owned(),
        };
        out.push(format!("- remove {} ({kept})", text(&r["path"])));
    }
    let unchanged = answer["unchanged"].as_u64().unwrap_or(0);
    out.push(format!(
        "{} to create, {} to update, {} to remove, {unchanged} unchanged{}",
        items("created").len(),
        items("updated").len(),
        items("removed").len(),
        if dry {
            " (dry run: nothing was changed)"
        } else {
            ""
        }
    ));
    out
}

pub async fn volumes(conn: Conn, cmd: VolumesCommand) -> anyhow::Result<()> {
    let c = Client::new(&conn)?;
    match cmd {
        VolumesCommand::List { state } => {
            let path = match state {
                Some(s) => format!("/volumes?state={s}"),
                None => "/volumes".to_owned(),
            };
            c.print(
                &c.get(&path).await?,
                &[
                    "id",
                    "workspace_id",
                    "state",
                    "bytes",
                    "retain_until",
                    "erase_after",
                    "reason",
                ],
            );
        }
    }
    Ok(())
}

pub async fn sweep(conn: Conn, dry_run: bool) -> anyhow::Result<()> {
    let c = Client::new(&conn)?;
    let report = c.post("/admin/sweep", json!({"dry_run": dry_run})).await?;
    if c.json {
        c.print(&report, &[]);
    } else {
        let items = report["items"].as_array().cloned().unwrap_or_default();
        println!(
            "{} in {} ms: {} action(s)",
            if dry_run { "dry run" } else { "sweep" },
            report["duration_ms"],
            items.len()
        );
        if !items.is_empty() {
            print_table(
                &items.iter().collect::<Vec<_>>(),
                &[
                    "action",
                    "outcome",
                    "workspace_id",
                    "volume_id",
                    "reason",
                    "bytes",
                ],
                !c.no_headers,
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn a_delete_says_what_it_removed_and_what_became_of_the_data() {
        let lone = json!({"status": "removed", "cascade_deleted": 1, "data": "retained",
            "restore_until": "2026-12-09T14:00:00.000Z"});
        expect![[r#"
            removed researcher (no child workspaces)
            saved data kept until 2026-12-09T14:00:00.000Z; `holdfast ws restore researcher` brings it back"#]]
        .assert_eq(&delete_lines("researcher", &lone).join("\n"));
        let tree = json!({"status": "removed", "cascade_deleted": 3, "data": "erase_pending",
            "restore_until": "2026-12-02T15:00:00.000Z"});
        expect![[r#"
            removed researcher and 2 child workspaces
            saved data will be erased after 2026-12-02T15:00:00.000Z; `holdfast ws restore researcher` before then cancels it"#]]
        .assert_eq(&delete_lines("researcher", &tree).join("\n"));
        let one = json!({"cascade_deleted": 2, "data": "none", "restore_until": null});
        expect![[r#"
            removed lead and 1 child workspace
            no saved data was kept (it did not keep any)"#]]
        .assert_eq(&delete_lines("lead", &one).join("\n"));
    }

    #[test]
    fn top_lists_live_workspaces_largest_first_with_uptime() {
        let now = humantime::parse_rfc3339("2026-12-02T10:00:00Z").unwrap();
        let list = json!([
            {"id": "a", "name": "small", "status": "online", "started_at": "2026-12-02T09:59:15.000Z",
             "tier": 2, "isolation": "bwrap", "limits": "enforced", "data": {"bytes": 10}},
            {"id": "b", "name": "big", "status": "online", "started_at": "2026-12-02T06:55:00.000Z",
             "tier": 3, "isolation": "none", "limits": "none", "data": {"bytes": 4_200_000}},
            {"id": "c", "name": "napping", "status": "paused", "started_at": null,
             "tier": 1, "isolation": "bwrap", "limits": "enforced", "data": {"bytes": 999}},
            {"id": "d", "name": "gone", "status": "removed", "started_at": null,
             "tier": 1, "isolation": "bwrap", "limits": "enforced", "data": {"bytes": 9_999_999}},
        ]);
        let rows = top_rows(&list, now);
        let got: Vec<String> = rows
            .iter()
            .map(|r| {
                TOP_COLUMNS
                    .iter()
                    .map(|c| cell(r, c))
                    .collect::<Vec<_>>()
                    .join(" | ")
            })
            .collect();
        expect![[r#"
            big | online | 3h05m | 4.2 MB | 3 | none | none | b
            napping | paused | - | 999 B | 1 | bwrap | enforced | c
            small | online | 45s | 10 B | 2 | bwrap | enforced | a"#]]
        .assert_eq(&got.join("\n"));
    }

    #[test]
    fn yaml_output_is_block_style_with_quoted_strings() {
        let v = json!({
            "name": "researcher",
            "odd key": "a: b # c",
            "tier": 2,
            "url": null,
            "runtime": {"command": ["sh", "-c", "echo \"hi\"\n"]},
            "env": {},
            "children": [{"id": "x", "tags": ["a", "b"]}, "plain", []],
        });
        expect![[r#"
            children:
              - id: "x"
                tags:
                  - "a"
                  - "b"
              - "plain"
              - []
            env: {}
            name: "researcher"
            "odd key": "a: b # c"
            runtime:
              command:
                - "sh"
                - "-c"
                - "echo \"hi\"\n"
            tier: 2
            url: null
        "#]]
        .assert_eq(&to_yaml(&v));
    }

    #[test]
    fn an_import_answer_reads_as_a_plan() {
        let answer = json!({
            "created": [{"id": null, "path": "root/new"}],
            "updated": [{"id": "u", "path": "root/a", "fields": ["tier", "env"]}],
            "removed": [
                {"id": "r", "path": "root/old", "data": "retained", "restore_until": "2026-12-08T10:00:00.000Z"},
                {"id": "s", "path": "root/old/tmp", "data": "none", "restore_until": null},
                {"id": "t", "path": "root/dry", "data": "retained", "restore_until": null},
            ],
            "unchanged": 2,
            "dry_run": true,
        });
        expect![[r#"
            + create root/new
            ~ update root/a (tier, env)
            - remove root/old (data kept until 2026-12-08T10:00:00.000Z)
            - remove root/old/tmp (no saved data)
            - remove root/dry (data kept for the retention grace)
            1 to create, 1 to update, 3 to remove, 2 unchanged (dry run: nothing was changed)"#]]
        .assert_eq(&plan_lines(&answer).join("\n"));
        assert_eq!(encode("a b/ü"), "a%20b%2F%C3%BC");
    }
}
