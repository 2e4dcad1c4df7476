//! What the canvas's templates show: the board (workspaces as a tree of
//! cards per org, and the recently deleted ones), the side panel, and the
//! plain words used for statuses and saved-data modes.

use crate::data::AuditView;
use crate::dto::WorkspaceView;
use askama::Template;
use holdfast_domain::{DataPersistence, Program, Status};
use std::collections::HashMap;
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

/// A deadline the JavaScript shows (`datetime` attribute): retained data
/// reads "Data kept until 8 Dec 14:00", erase-pending data "Data erased in
/// 4 min". While a legal hold lasts no grace runs out, and it says so.
pub(super) struct Countdown {
    /// `retain` (kept until), `erase` (erased in) or `hold` (no deadline).
    pub kind: &'static str,
    pub label: &'static str,
    pub at: String,
}

impl Countdown {
    fn of(ws: &WorkspaceView) -> Option<Self> {
        let held = ws.data.hold.is_some();
        match ws.data.state.as_str() {
            "retained" | "erase_pending" if held => Some(Countdown {
                kind: "hold",
                label: "Data kept while the legal hold lasts",
                at: String::new(),
            }),
            "retained" => ws.data.retain_until.clone().map(|at| Countdown {
                kind: "retain",
                label: "Data kept until",
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

/// What a tier gives (SPEC's limits table), for a tooltip.
pub(super) fn tier_title(tier: u8) -> String {
    format!("Tier {tier}: {}", tier_limits(&tier))
}

pub(super) fn tier_limits(tier: &u8) -> String {
    let (mem, procs, cpu) = match *tier {
        1 => ("256 MiB", 64, 50),
        2 => ("512 MiB", 128, 100),
        3 => ("1 GiB", 256, 200),
        _ => ("2 GiB", 512, 400),
    };
    format!(
        "up to {mem} of memory, {procs} processes, CPU weight {cpu} (where the host enforces limits)"
    )
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
    pub tier_title: String,
    /// `command` or the template's name, and the text shown (a command,
    /// shortened).
    pub runtime_kind: String,
    pub runtime_text: String,
    pub isolation: String,
    pub limits: String,
    /// When the current instance started (online workspaces: uptime).
    pub started_at: Option<String>,
    pub org_name: Option<String>,
    /// The parent's name, shown when the parent is not drawn above it.
    pub under: Option<String>,
    pub hold: Option<String>,
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
            tier_title: tier_title(ws.tier),
            runtime_kind: match &ws.runtime.program {
                Program::Template(_) => "template".to_owned(),
                Program::Command(_) => "command".to_owned(),
            },
            runtime_text: match &ws.runtime.program {
                Program::Template(t) => t.clone(),
                Program::Command(argv) => {
                    let full = join_command(argv);
                    if full.chars().count() > 48 {
                        full.chars().take(47).collect::<String>() + "…"
                    } else {
                        full
                    }
                }
            },
            isolation: ws.isolation.clone(),
            limits: ws.limits.clone(),
            started_at: ws
                .started_at
                .clone()
                .filter(|_| ws.status == Status::Online),
            org_name: None,
            under: None,
            hold: ws.data.hold.as_ref().map(|h| {
                h.reason
                    .clone()
                    .unwrap_or_else(|| "no reason given".to_owned())
            }),
            opens: false,
            closes: 0,
            close_range: 0..0,
        }
    }
}

/// How many cards one page of the board shows: enough to scan, few enough
/// that a live update re-renders in a few milliseconds at any fleet size.
pub(super) const PAGE_SIZE: usize = 100;

/// The board's search, filters, sort and page, from the page's query.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct BoardQuery {
    /// Matches a name or a role, case-insensitively.
    pub q: String,
    /// A status (`online`…), or empty for all.
    pub status: String,
    /// A chosen saved-data mode (`persist`, `ephemeral`, `auto`), or empty.
    pub mode: String,
    /// An org id, or empty.
    pub org: String,
    /// `tree` (the default), `name`, `status`, `size` or `activity`.
    pub sort: String,
    /// From 0.
    pub page: usize,
}

pub(super) const STATUSES: [&str; 7] = [
    "provisioning",
    "online",
    "offline",
    "degraded",
    "failed",
    "paused",
    "hibernated",
];
pub(super) const SORTS: [(&str, &str); 5] = [
    ("tree", "Org tree"),
    ("name", "Name"),
    ("status", "Status"),
    ("size", "Size"),
    ("activity", "Last activity"),
];

impl BoardQuery {
    /// Reads the query's known keys; unknown values fall back to the
    /// default view (this is a page, not the API: it never refuses).
    pub fn from_form(form: &HashMap<String, String>) -> Self {
        let get = |k: &str| form.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
        let status = get("status");
        let mode = get("mode");
        let sort = get("sort");
        let org = get("org");
        BoardQuery {
            q: get("q").chars().take(200).collect(),
            status: if STATUSES.contains(&status.as_str()) {
                status
            } else {
                String::new()
            },
            mode: if ["persist", "ephemeral", "auto"].contains(&mode.as_str()) {
                mode
            } else {
                String::new()
            },
            org: if Uuid::parse_str(&org).is_ok() {
                org
            } else {
                String::new()
            },
            sort: if SORTS.iter().any(|(k, _)| *k == sort) {
                sort
            } else {
                "tree".to_owned()
            },
            page: get("page").parse().unwrap_or(0),
        }
    }

    /// Whether anything narrows the board (then it is a flat list).
    pub fn filtered(&self) -> bool {
        !self.q.is_empty()
            || !self.status.is_empty()
            || !self.mode.is_empty()
            || !self.org.is_empty()
    }

    fn matches(&self, ws: &WorkspaceView) -> bool {
        if !self.q.is_empty() {
            let q = self.q.to_lowercase();
            let in_name = ws.name.to_lowercase().contains(&q);
            let in_role = ws
                .role
                .as_deref()
                .is_some_and(|r| r.to_lowercase().contains(&q));
            if !in_name && !in_role {
                return false;
            }
        }
        if !self.status.is_empty() && ws.status.as_str() != self.status {
            return false;
        }
        if !self.mode.is_empty() {
            let chosen = match ws.compute.data_persistence {
                None => "auto",
                Some(DataPersistence::Persist) => "persist",
                Some(DataPersistence::Ephemeral) => "ephemeral",
            };
            if chosen != self.mode {
                return false;
            }
        }
        if !self.org.is_empty() && ws.org_id.to_string() != self.org {
            return false;
        }
        true
    }

    /// The query string for this view at another page (for the pager's
    /// links), `&`-escaped by the template.
    pub fn href(&self, page: usize) -> String {
        let mut parts = Vec::new();
        let enc = |v: &str| {
            v.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        };
        for (k, v) in [
            ("q", &self.q),
            ("status", &self.status),
            ("mode", &self.mode),
            ("org", &self.org),
        ] {
            if !v.is_empty() {
                parts.push(format!("{k}={}", enc(v)));
            }
        }
        if self.sort != "tree" {
            parts.push(format!("sort={}", self.sort));
        }
        if page > 0 {
            parts.push(format!("page={page}"));
        }
        if parts.is_empty() {
            "/canvas".to_owned()
        } else {
            format!("/canvas?{}", parts.join("&"))
        }
    }
}

/// A run of cards of one org on the current page.
pub(super) struct OrgTree {
    /// `None` for a flat (searched or sorted) list.
    pub name: Option<String>,
    /// The page's cards of this org, in order; `opens`/`closes` nest them.
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
    pub hold: Option<String>,
}

pub(super) struct Pager {
    /// 1-based numbers of the first and last card shown, and how many match.
    pub from: usize,
    pub to: usize,
    pub total: usize,
    pub page: usize,
    pub pages: usize,
    pub prev: Option<String>,
    pub next: Option<String>,
}

#[derive(Default)]
pub(super) struct Board {
    pub orgs: Vec<OrgTree>,
    pub show_org_names: bool,
    pub deleted: Vec<DeletedRow>,
    pub live_count: usize,
    /// How many live workspaces the search and filters leave.
    pub matching: usize,
    pub query: BoardQuery,
    pub pager: Option<Pager>,
    /// Every org the caller sees, for the org filter: `(id, name)`.
    pub org_options: Vec<(String, String)>,
    /// Every workspace read, removed ones included (for the side panel).
    pub all: Vec<WorkspaceView>,
}

fn restorable(ws: &WorkspaceView) -> bool {
    ws.status == Status::Removed && matches!(ws.data.state.as_str(), "retained" | "erase_pending")
}

/// Problems first, then the running, then the stopped.
fn status_rank(s: Status) -> u8 {
    match s {
        Status::Failed => 0,
        Status::Degraded => 1,
        Status::Offline => 2,
        Status::Provisioning => 3,
        Status::Online => 4,
        Status::Paused => 5,
        Status::Hibernated => 6,
        Status::Removed => 7,
    }
}

/// Gives a page's cards (in pre-order, each with its depth in its org tree)
/// their nesting: a card nests under the card above it only when that is
/// its parent on the same page; one whose parent is on another page starts
/// at the top and names its parent.
fn nest(mut cards: Vec<(Card, usize, Option<String>)>) -> Vec<Card> {
    let mut stack: Vec<usize> = Vec::new();
    let mut levels = Vec::with_capacity(cards.len());
    for (_, depth, _) in &cards {
        while stack.last().is_some_and(|d| d >= depth) {
            stack.pop();
        }
        levels.push(stack.len());
        stack.push(*depth);
    }
    let n = cards.len();
    for i in 0..n {
        let here = levels[i];
        let next = if i + 1 < n { levels[i + 1] } else { 0 };
        let (card, depth, parent) = &mut cards[i];
        card.opens = next > here;
        card.closes = here.saturating_sub(next);
        card.close_range = 0..card.closes;
        if here == 0 && *depth > 0 {
            card.under = parent.take();
        }
    }
    cards.into_iter().map(|(c, _, _)| c).collect()
}

impl Board {
    pub fn new(
        all: Vec<WorkspaceView>,
        org_names: &HashMap<Uuid, String>,
        query: BoardQuery,
    ) -> Self {
        let live: HashMap<Uuid, &WorkspaceView> = all
            .iter()
            .filter(|w| w.status != Status::Removed)
            .map(|w| (w.id, w))
            .collect();
        let org_name = |org: Uuid| {
            org_names
                .get(&org)
                .cloned()
                .unwrap_or_else(|| format!("org {org}"))
        };
        let show_org_names = org_names.len() > 1
            || live
                .values()
                .map(|w| w.org_id)
                .collect::<std::collections::HashSet<_>>()
                .len()
                > 1;
        let card_of = |w: &WorkspaceView| {
            let mut c = Card::of(w);
            if show_org_names {
                c.org_name = Some(org_name(w.org_id));
            }
            c
        };
        let name_of = |id: Option<Uuid>| id.and_then(|p| live.get(&p)).map(|p| p.name.clone());
        let by_name = |a: &&WorkspaceView, b: &&WorkspaceView| {
            a.name
                .to_lowercase()
                .cmp(&b.name.to_lowercase())
                .then(a.id.cmp(&b.id))
        };

        // Pre-order of the whole forest, org by org, or the flat list the
        // search, filters and sort leave.
        let mut ordered: Vec<(&WorkspaceView, usize)> = Vec::new();
        let flat = query.filtered() || query.sort != "tree";
        if flat {
            let mut list: Vec<&WorkspaceView> = live
                .values()
                .copied()
                .filter(|w| query.matches(w))
                .collect();
            list.sort_by(by_name);
            match query.sort.as_str() {
                "status" => list.sort_by_key(|w| status_rank(w.status)),
                "size" => list.sort_by_key(|w| std::cmp::Reverse(w.data.bytes)),
                "activity" => list.sort_by(|a, b| b.updated_at.cmp(&a.updated_at)),
                _ => {}
            }
            ordered.extend(list.into_iter().map(|w| (w, 0)));
        } else {
            let mut children: HashMap<Uuid, Vec<&WorkspaceView>> = HashMap::new();
            let mut roots: HashMap<Uuid, Vec<&WorkspaceView>> = HashMap::new();
            for w in live.values() {
                match w.parent_id.filter(|p| live.contains_key(p)) {
                    Some(p) => children.entry(p).or_default().push(w),
                    None => roots.entry(w.org_id).or_default().push(w),
                }
            }
            for list in children.values_mut() {
                list.sort_by(by_name);
            }
            let mut orgs: Vec<(String, Uuid)> = roots.keys().map(|o| (org_name(*o), *o)).collect();
            orgs.sort();
            for (_, org) in orgs {
                let mut list = roots.remove(&org).unwrap_or_default();
                list.sort_by(by_name);
                // Iterative, so that a deep tree cannot overflow the stack.
                let mut todo: Vec<(&WorkspaceView, usize)> =
                    list.into_iter().rev().map(|w| (w, 0)).collect();
                while let Some((w, depth)) = todo.pop() {
                    ordered.push((w, depth));
                    if let Some(kids) = children.get(&w.id) {
                        todo.extend(kids.iter().rev().map(|k| (*k, depth + 1)));
                    }
                }
            }
        }
        let matching = ordered.len();
        let pages = matching.div_ceil(PAGE_SIZE).max(1);
        let page = query.page.min(pages - 1);
        let start = page * PAGE_SIZE;
        let shown = &ordered[start.min(matching)..(start + PAGE_SIZE).min(matching)];

        // The page's cards, grouped in runs of one org (tree view) or one
        // run (flat list).
        let mut orgs: Vec<OrgTree> = Vec::new();
        let mut run: Vec<(Card, usize, Option<String>)> = Vec::new();
        let mut run_org: Option<Uuid> = None;
        for (w, depth) in shown {
            if !flat && run_org.is_some_and(|o| o != w.org_id) {
                orgs.push(OrgTree {
                    name: run_org.map(org_name),
                    trees: vec![nest(std::mem::take(&mut run))],
                });
            }
            run_org = Some(w.org_id);
            let mut card = card_of(w);
            if flat {
                card.under = name_of(w.parent_id);
            }
            run.push((card, *depth, name_of(w.parent_id)));
        }
        if !run.is_empty() {
            orgs.push(OrgTree {
                name: if flat { None } else { run_org.map(org_name) },
                trees: vec![if flat {
                    run.into_iter().map(|(c, _, _)| c).collect()
                } else {
                    nest(run)
                }],
            });
        }
        let pager = (matching > PAGE_SIZE).then(|| Pager {
            from: start + 1,
            to: (start + PAGE_SIZE).min(matching),
            total: matching,
            page: page + 1,
            pages,
            prev: (page > 0).then(|| query.href(page - 1)),
            next: (page + 1 < pages).then(|| query.href(page + 1)),
        });

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
                hold: w.data.hold.as_ref().map(|h| {
                    h.reason
                        .clone()
                        .unwrap_or_else(|| "no reason given".to_owned())
                }),
            })
            .collect();
        let mut org_options: Vec<(String, String)> = org_names
            .iter()
            .map(|(id, name)| (id.to_string(), name.clone()))
            .collect();
        org_options.sort_by(|a, b| a.1.cmp(&b.1));
        Board {
            show_org_names,
            orgs,
            deleted,
            live_count: live.len(),
            matching,
            query: BoardQuery { page, ..query },
            pager,
            org_options,
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
    pub org_name: String,
    pub tier_title: String,
    /// The built-in runtime answers messages; a command does not.
    pub has_chat: bool,
    pub hold: Option<crate::dto::HoldView>,
    /// The server's graces in milliseconds, empty when not known here
    /// (a remote control plane's).
    pub retention_ms: String,
    pub erase_ms: String,
    /// Data size and restarts over the last 24 hours.
    pub usage: UsageChart,
}

/// The usage chart of a workspace's Details: its data size and restarts
/// over the last 24 hours, one column per 15-minute bucket, drawn on the
/// server as inline SVG (no script, no chart library).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageChart {
    /// One bar per bucket with a measured size.
    pub bars: Vec<UsageBar>,
    /// One mark per bucket with restarts.
    pub restarts: Vec<RestartMark>,
    /// The largest size in the window ("0 B" with none).
    pub peak: String,
    /// The newest measured size, if any.
    pub latest: Option<String>,
    /// Restarts in the window, all buckets together.
    pub restart_total: i64,
    /// The one-line text alternative of the chart.
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageBar {
    pub x: String,
    pub y: String,
    pub height: String,
    pub bytes: i64,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartMark {
    pub x: String,
    pub count: i64,
    pub title: String,
}

/// The chart's drawing area, in SVG user units.
pub(super) const CHART_WIDTH: i64 = 288;
pub(super) const CHART_HEIGHT: i64 = 56;
/// The band at the top that holds the restart marks.
const CHART_MARKS: i64 = 10;

impl UsageChart {
    /// Lays out `samples` (oldest first, as the store keeps them) in the
    /// window that ends in the bucket of `now`.
    pub fn new(samples: &[holdfast_store::UsageSample], now: holdfast_domain::Millis) -> Self {
        use holdfast_store::{USAGE_BUCKET_MS, USAGE_BUCKETS, usage_bucket};
        let newest = usage_bucket(now);
        let column = |bucket: i64| USAGE_BUCKETS - 1 - (newest - bucket) / USAGE_BUCKET_MS;
        let in_window: Vec<_> = samples
            .iter()
            .filter(|s| (0..USAGE_BUCKETS).contains(&column(s.bucket)))
            .collect();
        let peak = in_window.iter().filter_map(|s| s.bytes).max().unwrap_or(0);
        let step = CHART_WIDTH as f64 / USAGE_BUCKETS as f64;
        let room = (CHART_HEIGHT - CHART_MARKS - 1) as f64;
        let ago = |bucket: i64| -> String {
            let mins = (now - bucket).max(0) / 60_000;
            match (mins / 60, mins % 60) {
                (0, m) => format!("{m} min ago"),
                (h, 0) => format!("{h} h ago"),
                (h, m) => format!("{h} h {m} min ago"),
            }
        };
        let bars = in_window
            .iter()
            .filter_map(|s| {
                let bytes = s.bytes?;
                // A size of zero still shows as a line on the floor.
                let h = if peak == 0 {
                    1.0
                } else {
                    (bytes as f64 / peak as f64 * room).max(1.0)
                };
                Some(UsageBar {
                    x: format!("{:.1}", column(s.bucket) as f64 * step),
                    y: format!("{:.1}", CHART_HEIGHT as f64 - h),
                    height: format!("{h:.1}"),
                    bytes,
                    title: format!("{}: {}", ago(s.bucket), human_bytes(bytes)),
                })
            })
            .collect();
        let restarts: Vec<RestartMark> = in_window
            .iter()
            .filter(|s| s.restarts > 0)
            .map(|s| RestartMark {
                x: format!("{:.1}", column(s.bucket) as f64 * step),
                count: s.restarts,
                title: format!(
                    "{}: {} restart{}",
                    ago(s.bucket),
                    s.restarts,
                    if s.restarts == 1 { "" } else { "s" }
                ),
            })
            .collect();
        let restart_total = restarts.iter().map(|r| r.count).sum();
        let latest = in_window
            .iter()
            .rev()
            .find_map(|s| s.bytes)
            .map(human_bytes);
        let size = match &latest {
            Some(l) => format!("data size now {l}, peak {}", human_bytes(peak)),
            None => "no data size measured".to_owned(),
        };
        let summary = format!(
            "Last 24 h: {size}; {restart_total} restart{}.",
            if restart_total == 1 { "" } else { "s" }
        );
        UsageChart {
            bars,
            restarts,
            peak: human_bytes(peak),
            latest,
            restart_total,
            summary,
        }
    }
}

/// The tabs of the side panel, in order: `(key, label)`.
pub(super) const TABS: [(&str, &str); 7] = [
    ("details", "Details"),
    ("config", "Config"),
    ("logs", "Logs"),
    ("files", "Files"),
    ("snapshots", "Snapshots"),
    ("chat", "Chat"),
    ("activity", "Activity"),
];

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
    pub fn new(
        ws: WorkspaceView,
        board: &Board,
        audit: Vec<AuditView>,
        tab: Option<&str>,
        graces: Option<super::Graces>,
        usage: UsageChart,
    ) -> Self {
        let tab = match tab {
            Some(t) if TABS.iter().any(|(k, _)| *k == t) => t.to_owned(),
            _ => "details".to_owned(),
        };
        let org_name = board
            .org_options
            .iter()
            .find(|(id, _)| *id == ws.org_id.to_string())
            .map(|(_, n)| n.clone())
            .unwrap_or_else(|| "unknown org".to_owned());
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
            org_name,
            tier_title: tier_title(ws.tier),
            has_chat: !runtime_is_command,
            hold: ws.data.hold.clone(),
            retention_ms: graces
                .map(|g| g.retention.as_millis().to_string())
                .unwrap_or_default(),
            erase_ms: graces
                .map(|g| g.erase.as_millis().to_string())
                .unwrap_or_default(),
            usage,
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

    fn chart(samples: &[(i64, Option<i64>, i64)]) -> String {
        use holdfast_store::{USAGE_BUCKET_MS, UsageSample};
        let now = 1_800_000_000_000 - 1_800_000_000_000 % USAGE_BUCKET_MS + 60_000;
        let samples: Vec<UsageSample> = samples
            .iter()
            .map(|&(buckets_ago, bytes, restarts)| UsageSample {
                bucket: now - 60_000 - buckets_ago * USAGE_BUCKET_MS,
                bytes,
                restarts,
            })
            .collect();
        let c = UsageChart::new(&samples, now);
        let mut out = vec![c.summary];
        out.extend(
            c.bars
                .iter()
                .map(|b| format!("bar x={} y={} h={} {}", b.x, b.y, b.height, b.title)),
        );
        out.extend(
            c.restarts
                .iter()
                .map(|r| format!("mark x={} {}", r.x, r.title)),
        );
        out.join("\n")
    }

    #[test]
    fn usage_chart_with_nothing_recorded() {
        expect_test::expect![[r#"Last 24 h: no data size measured; 0 restarts."#]]
            .assert_eq(&chart(&[]));
    }

    #[test]
    fn usage_chart_scales_to_the_peak_and_marks_restarts() {
        expect_test::expect![[r#"
            Last 24 h: data size now 2.0 KB, peak 4.0 KB; 3 restarts.
            bar x=0.0 y=11.0 h=45.0 23 h 46 min ago: 4.0 KB
            bar x=285.0 y=33.5 h=22.5 1 min ago: 2.0 KB
            mark x=282.0 16 min ago: 1 restart
            mark x=285.0 1 min ago: 2 restarts"#]]
        .assert_eq(&chart(&[
            (95, Some(4000), 0),
            (1, None, 1),
            (0, Some(2000), 2),
        ]));
    }

    #[test]
    fn usage_chart_leaves_out_what_is_older_than_the_window() {
        expect_test::expect![[r#"
            Last 24 h: data size now 0 B, peak 0 B; 0 restarts.
            bar x=0.0 y=55.0 h=1.0 23 h 46 min ago: 0 B"#]]
        .assert_eq(&chart(&[(96, Some(9000), 4), (95, Some(0), 0)]));
    }

    #[test]
    fn mode_labels() {
        assert_eq!(mode_label(None), "Auto");
        assert_eq!(mode_label(Some(DataPersistence::Persist)), "Always keep");
        assert_eq!(mode_label(Some(DataPersistence::Ephemeral)), "Don't keep");
    }
}
