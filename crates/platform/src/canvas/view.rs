//! What the canvas's templates show: the board (workspaces as a tree of
//! cards per org, and the recently deleted ones), the side panel, and the
//! plain words used for statuses and saved-data modes.

use crate::data::AuditView;
use crate::dto::WorkspaceView;
use askama::Template;
use holdfast_domain::{DataPersistence, Program, Status};
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

#[derive(Template)]
#[template(path = "login.html")]
pub(super) struct LoginPage {
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "board.html")]
pub(super) struct BoardPage {
    pub who: String,
    pub board: BoardFragment,
    pub panel: Option<PanelFragment>,
}

#[derive(Template)]
#[template(path = "_board.html")]
pub(super) struct BoardFragment {
    pub board: Board,
    /// Why the board could not be read, shown instead of it.
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "_error.html")]
pub(super) struct ErrorFragment {
    pub message: String,
}

/// The saved-data mode as the canvas names it.
pub(super) struct ModeBadge {
    pub label: String,
    /// A CSS class: `keep`, `nokeep` or `auto`.
    pub class: &'static str,
    pub title: String,
}

pub(super) fn mode_label(mode: Option<DataPersistence>) -> &'static str {
    match mode {
        None => "Auto",
        Some(DataPersistence::Persist) => "Always keep",
        Some(DataPersistence::Ephemeral) => "Don't keep",
    }
}

fn resolved(ws: &WorkspaceView) -> Option<DataPersistence> {
    match ws.data.mode.as_deref() {
        Some("persist") => Some(DataPersistence::Persist),
        Some("ephemeral") => Some(DataPersistence::Ephemeral),
        _ => None,
    }
}

impl ModeBadge {
    fn of(ws: &WorkspaceView) -> Self {
        let chosen = ws.compute.data_persistence;
        let resolved = resolved(ws);
        let class = match chosen.or(resolved) {
            Some(DataPersistence::Persist) => "keep",
            Some(DataPersistence::Ephemeral) => "nokeep",
            None => "auto",
        };
        let label = match (chosen, resolved) {
            (Some(m), _) => mode_label(Some(m)).to_owned(),
            (None, Some(r)) => format!("Auto → {}", mode_label(Some(r))),
            (None, None) => "Auto".to_owned(),
        };
        let title = match chosen.or(resolved) {
            Some(DataPersistence::Persist) => {
                "Saved data survives restarts, config changes and crashes"
            }
            Some(DataPersistence::Ephemeral) => "Every start begins with an empty data dir",
            None => "Decided by the server's default at the next start",
        };
        ModeBadge {
            label,
            class,
            title: format!("Saved data: {title}"),
        }
    }
}

/// A deadline the JavaScript counts down to (`datetime` attribute), with a
/// readable fallback.
pub(super) struct Countdown {
    /// `retain` (kept until) or `erase` (erased at).
    pub kind: &'static str,
    pub label: &'static str,
    pub at: String,
}

impl Countdown {
    fn of(ws: &WorkspaceView) -> Option<Self> {
        match ws.data.state.as_str() {
            "retained" => ws.data.retain_until.clone().map(|at| Countdown {
                kind: "retain",
                label: "Data kept for",
                at,
            }),
            "erase_pending" => ws.data.erase_after.clone().map(|at| Countdown {
                kind: "erase",
                label: "Data erased in",
                at,
            }),
            _ => None,
        }
    }
}

/// Bytes for people: `0 B`, `12.3 KB`, `4.0 MB`.
pub(super) fn human_bytes(n: i64) -> String {
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

pub(super) fn status_label(status: &str) -> String {
    let mut c = status.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn data_state_label(state: &str) -> &'static str {
    match state {
        "active" => "Attached",
        "retained" => "Kept (retained)",
        "erase_pending" => "Erase pending",
        "erasing" => "Being erased",
        "erased" => "Erased",
        "none" => "No saved data",
        _ => "Unknown",
    }
}

fn size_label(ws: &WorkspaceView) -> String {
    match ws.data.state.as_str() {
        "none" if resolved(ws) == Some(DataPersistence::Ephemeral) => "scratch only".to_owned(),
        "none" => "no data yet".to_owned(),
        "erased" => "erased".to_owned(),
        _ => human_bytes(ws.data.bytes),
    }
}

/// One workspace card. `opens` and `closes` lay the flat list out as nested
/// lists: a card with children opens a `<ul>`, and the last card of a subtree
/// closes as many lists as subtrees end with it.
pub(super) struct Card {
    pub id: String,
    pub name: String,
    pub role: Option<String>,
    pub status: String,
    pub status_label: String,
    pub mode: ModeBadge,
    pub size: String,
    pub countdown: Option<Countdown>,
    pub tier: u8,
    pub opens: bool,
    pub closes: usize,
    /// `0..closes`, for the template.
    pub close_range: std::ops::Range<usize>,
}

impl Card {
    fn of(ws: &WorkspaceView) -> Self {
        Card {
            id: ws.id.to_string(),
            name: ws.name.clone(),
            role: ws.role.clone().filter(|r| !r.is_empty()),
            status: ws.status.as_str().to_owned(),
            status_label: status_label(ws.status.as_str()),
            mode: ModeBadge::of(ws),
            size: size_label(ws),
            countdown: Countdown::of(ws),
            tier: ws.tier,
            opens: false,
            closes: 0,
            close_range: 0..0,
        }
    }
}

pub(super) struct OrgTree {
    pub name: String,
    /// One flat list of cards per root workspace.
    pub trees: Vec<Vec<Card>>,
}

/// A removed workspace whose data can still be brought back.
pub(super) struct DeletedRow {
    pub id: String,
    pub name: String,
    pub removed_at: String,
    pub mode: ModeBadge,
    pub size: String,
    pub countdown: Option<Countdown>,
}

#[derive(Default)]
pub(super) struct Board {
    pub orgs: Vec<OrgTree>,
    pub show_org_names: bool,
    pub deleted: Vec<DeletedRow>,
    pub live_count: usize,
    /// Every workspace read, removed ones included (for the side panel).
    pub all: Vec<WorkspaceView>,
}

fn restorable(ws: &WorkspaceView) -> bool {
    ws.status == Status::Removed && matches!(ws.data.state.as_str(), "retained" | "erase_pending")
}

impl Board {
    pub fn new(all: Vec<WorkspaceView>, org_names: &HashMap<Uuid, String>) -> Self {
        let live: HashMap<Uuid, &WorkspaceView> = all
            .iter()
            .filter(|w| w.status != Status::Removed)
            .map(|w| (w.id, w))
            .collect();
        let mut children: HashMap<Uuid, Vec<&WorkspaceView>> = HashMap::new();
        let mut roots: BTreeMap<Uuid, Vec<&WorkspaceView>> = BTreeMap::new();
        for w in live.values() {
            match w.parent_id.filter(|p| live.contains_key(p)) {
                Some(p) => children.entry(p).or_default().push(w),
                None => roots.entry(w.org_id).or_default().push(w),
            }
        }
        let by_name = |a: &&WorkspaceView, b: &&WorkspaceView| {
            a.name
                .to_lowercase()
                .cmp(&b.name.to_lowercase())
                .then(a.id.cmp(&b.id))
        };
        for list in children.values_mut() {
            list.sort_by(by_name);
        }
        fn visit(
            w: &WorkspaceView,
            children: &HashMap<Uuid, Vec<&WorkspaceView>>,
            out: &mut Vec<Card>,
        ) {
            let kids = children.get(&w.id).map(Vec::as_slice).unwrap_or_default();
            let mut card = Card::of(w);
            card.opens = !kids.is_empty();
            out.push(card);
            for k in kids {
                visit(k, children, out);
            }
            // The subtree of a card with children ends with its last card.
            if let Some(last) = out.last_mut().filter(|_| !kids.is_empty()) {
                last.closes += 1;
                last.close_range = 0..last.closes;
            }
        }
        let mut orgs: Vec<OrgTree> = roots
            .into_iter()
            .map(|(org, mut list)| {
                list.sort_by(by_name);
                let trees = list
                    .into_iter()
                    .map(|r| {
                        let mut out = Vec::new();
                        visit(r, &children, &mut out);
                        out
                    })
                    .collect();
                OrgTree {
                    name: org_names
                        .get(&org)
                        .cloned()
                        .unwrap_or_else(|| format!("org {org}")),
                    trees,
                }
            })
            .collect();
        orgs.sort_by(|a, b| a.name.cmp(&b.name));
        let mut deleted: Vec<&WorkspaceView> = all.iter().filter(|w| restorable(w)).collect();
        deleted.sort_by(|a, b| b.removed_at.cmp(&a.removed_at));
        let deleted = deleted
            .into_iter()
            .map(|w| DeletedRow {
                id: w.id.to_string(),
                name: w.name.clone(),
                removed_at: w.removed_at.clone().unwrap_or_default(),
                mode: ModeBadge::of(w),
                size: size_label(w),
                countdown: Countdown::of(w),
            })
            .collect();
        Board {
            show_org_names: orgs.len() > 1,
            orgs,
            deleted,
            live_count: live.len(),
            all,
        }
    }
}

pub(super) struct AuditRow {
    pub at: String,
    pub action: String,
    pub actor: String,
    pub reason: Option<String>,
}

/// The side panel of one workspace, with its four tabs.
#[derive(Template)]
#[template(path = "_panel.html")]
pub(super) struct PanelFragment {
    pub ws: WorkspaceView,
    pub card: Card,
    /// `details`, `config`, `chat` or `activity`.
    pub tab: String,
    pub removed: bool,
    pub restorable: bool,
    pub parent: Option<(String, String)>,
    /// Live children (names), which a delete removes too.
    pub children: Vec<String>,
    /// Every live descendant: what a delete cascades to.
    pub descendants: usize,
    pub runtime_is_command: bool,
    pub runtime_text: String,
    /// `runtime.image` when set (the container backend's image for it).
    pub image: Option<String>,
    /// `auto`, `persist` or `ephemeral`.
    pub persistence: &'static str,
    pub volume_size_gb: String,
    pub resolved_note: String,
    pub data_state: &'static str,
    pub bytes: String,
    pub audit: Vec<AuditRow>,
}

/// Joins argv for a text field, quoting what a shell-like split would break.
pub(super) fn join_command(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty() && !a.chars().any(|c| c.is_whitespace() || "'\"\\".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl PanelFragment {
    pub fn new(ws: WorkspaceView, board: &Board, audit: Vec<AuditView>, tab: Option<&str>) -> Self {
        let tab = match tab {
            Some(t @ ("details" | "config" | "chat" | "activity")) => t.to_owned(),
            _ => "details".to_owned(),
        };
        let live_children = |id: Uuid| -> Vec<&WorkspaceView> {
            board
                .all
                .iter()
                .filter(|w| w.parent_id == Some(id) && w.status != Status::Removed)
                .collect()
        };
        let children: Vec<String> = live_children(ws.id)
            .iter()
            .map(|w| w.name.clone())
            .collect();
        let mut descendants = 0;
        let mut stack = vec![ws.id];
        while let Some(id) = stack.pop() {
            for c in live_children(id) {
                descendants += 1;
                stack.push(c.id);
            }
        }
        let parent = ws.parent_id.map(|p| {
            let name = board
                .all
                .iter()
                .find(|w| w.id == p)
                .map(|w| w.name.clone())
                .unwrap_or_else(|| "unknown".to_owned());
            (p.to_string(), name)
        });
        let (runtime_is_command, runtime_text) = match &ws.runtime.program {
            Program::Template(t) => (false, t.clone()),
            Program::Command(argv) => (true, join_command(argv)),
        };
        let persistence = match ws.compute.data_persistence {
            None => "auto",
            Some(DataPersistence::Persist) => "persist",
            Some(DataPersistence::Ephemeral) => "ephemeral",
        };
        let resolved_note = match (ws.compute.data_persistence, resolved(&ws)) {
            (None, Some(r)) => format!(
                "Auto currently resolves to {} (the server's default).",
                mode_label(Some(r))
            ),
            (None, None) => "Auto resolves to the server's default at the next start.".to_owned(),
            (Some(_), _) => String::new(),
        };
        PanelFragment {
            card: Card::of(&ws),
            removed: ws.status == Status::Removed,
            restorable: restorable(&ws),
            parent,
            children,
            descendants,
            runtime_is_command,
            runtime_text,
            image: ws.runtime.image.as_ref().map(|i| i.as_str().to_owned()),
            persistence,
            volume_size_gb: ws
                .compute
                .volume
                .map(|v| v.size_gb.to_string())
                .unwrap_or_default(),
            resolved_note,
            data_state: data_state_label(&ws.data.state),
            bytes: size_label(&ws),
            audit: audit
                .into_iter()
                .map(|a| AuditRow {
                    at: a.at,
                    action: a.action.as_str().to_owned(),
                    actor: a.actor,
                    reason: a.reason.map(|r| r.as_str().to_owned()),
                })
                .collect(),
            tab,
            ws,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(12_345), "12.3 KB");
        assert_eq!(human_bytes(4_000_000), "4.0 MB");
    }

    #[test]
    fn commands_round_trip_as_text() {
        let argv = ["sh", "-c", "exec sleep infinity", "it's"].map(String::from);
        assert_eq!(
            join_command(&argv),
            r#"sh -c 'exec sleep infinity' 'it'\''s'"#
        );
    }

    #[test]
    fn mode_labels() {
        assert_eq!(mode_label(None), "Auto");
        assert_eq!(mode_label(Some(DataPersistence::Persist)), "Always keep");
        assert_eq!(mode_label(Some(DataPersistence::Ephemeral)), "Don't keep");
    }
}
