//! The import plan: a pure function of the document, the org's live
//! workspaces and the mode, saying what to create, what to change (and which
//! fields), what to remove and how much is already as the document says.
//!
//! A workspace of the document is matched to a live one by its path of
//! names from the root: the root to a live top-level workspace of the same
//! name, each child to a live child of the matched parent of the same name.
//! A rename or a move is therefore a new workspace (and, in reconcile mode,
//! the removal of the old one, whose data is kept).

use super::document::{OrgNode, join};
use holdfast_domain::{Compute, Env, Runtime, Tier};
use holdfast_store::{WorkspacePatch, WorkspaceRow};
use std::collections::HashMap;
use uuid::Uuid;

/// A live workspace of the org, as the plan sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    pub id: Uuid,
    pub parent_id: Option<Uuid>,
    pub name: String,
    pub role: Option<String>,
    pub tier: Tier,
    pub runtime: Runtime,
    pub env: Env,
    pub compute: Compute,
}

impl From<&WorkspaceRow> for Live {
    fn from(w: &WorkspaceRow) -> Self {
        Live {
            id: w.id,
            parent_id: w.parent_id,
            name: w.name.clone(),
            role: w.role.clone(),
            tier: w.tier,
            runtime: w.runtime.clone(),
            env: w.env.clone(),
            compute: w.compute,
        }
    }
}

/// Default mode creates and changes; reconcile also removes what the
/// document no longer names, within the tree it describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Merge,
    Reconcile,
}

/// Where a created workspace goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parent {
    /// A top-level workspace of the org.
    Top,
    /// Under a live workspace.
    Live(Uuid),
    /// Under a workspace this plan creates (an index into `creates`, always
    /// an earlier one).
    New(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Create {
    pub path: String,
    pub parent: Parent,
    pub node: OrgNode,
}

#[derive(Debug, Clone)]
pub struct Update {
    pub id: Uuid,
    pub path: String,
    /// The fields that differ, in a fixed order.
    pub fields: Vec<&'static str>,
    pub patch: WorkspacePatch,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Remove {
    pub id: Uuid,
    pub path: String,
}

/// What an import does. `removes` lists parents before their children.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub creates: Vec<Create>,
    pub updates: Vec<Update>,
    pub removes: Vec<Remove>,
    pub unchanged: usize,
}

/// The document names a path that more than one live workspace has (the
/// API lets siblings share a name; a document cannot tell them apart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ambiguous {
    pub path: String,
    pub ids: Vec<Uuid>,
}

struct Index<'a> {
    children: HashMap<Option<Uuid>, Vec<&'a Live>>,
}

impl<'a> Index<'a> {
    fn named(&self, parent: Option<Uuid>, name: &str) -> Vec<&'a Live> {
        self.children
            .get(&parent)
            .map(|c| c.iter().copied().filter(|l| l.name == name).collect())
            .unwrap_or_default()
    }

    fn kids(&self, parent: Uuid) -> &[&'a Live] {
        self.children.get(&Some(parent)).map_or(&[], Vec::as_slice)
    }
}

/// Computes the plan. `live` is every live workspace of the org, in the
/// order the API lists them (oldest first), which orders the removals.
pub fn plan(doc: &OrgNode, live: &[Live], mode: Mode) -> Result<Plan, Ambiguous> {
    let mut index = Index {
        children: HashMap::new(),
    };
    for l in live {
        index.children.entry(l.parent_id).or_default().push(l);
    }
    let mut out = Plan::default();
    let path = doc.name.as_str().to_owned();
    match one(index.named(None, doc.name.as_str()), &path)? {
        None => create_subtree(&mut out, doc, Parent::Top, path),
        Some(l) => matched(&mut out, &index, doc, l, path, mode)?,
    }
    Ok(out)
}

fn one<'a>(found: Vec<&'a Live>, path: &str) -> Result<Option<&'a Live>, Ambiguous> {
    match found.as_slice() {
        [] => Ok(None),
        [l] => Ok(Some(l)),
        many => Err(Ambiguous {
            path: path.to_owned(),
            ids: many.iter().map(|l| l.id).collect(),
        }),
    }
}

fn create_subtree(out: &mut Plan, node: &OrgNode, parent: Parent, path: String) {
    let at = out.creates.len();
    let mut bare = node.clone();
    bare.children.clear();
    out.creates.push(Create {
        path: path.clone(),
        parent,
        node: bare,
    });
    for child in &node.children {
        let p = join(Some(&path), child.name.as_str());
        create_subtree(out, child, Parent::New(at), p);
    }
}

fn matched(
    out: &mut Plan,
    index: &Index<'_>,
    node: &OrgNode,
    live: &Live,
    path: String,
    mode: Mode,
) -> Result<(), Ambiguous> {
    let (fields, patch) = diff(node, live);
    if fields.is_empty() {
        out.unchanged += 1;
    } else {
        out.updates.push(Update {
            id: live.id,
            path: path.clone(),
            fields,
            patch,
        });
    }
    for child in &node.children {
        let p = join(Some(&path), child.name.as_str());
        match one(index.named(Some(live.id), child.name.as_str()), &p)? {
            None => create_subtree(out, child, Parent::Live(live.id), p),
            Some(l) => matched(out, index, child, l, p, mode)?,
        }
    }
    if mode == Mode::Reconcile {
        for kid in index.kids(live.id) {
            if !node.children.iter().any(|c| c.name.as_str() == kid.name) {
                remove_subtree(out, index, kid, join(Some(&path), &kid.name));
            }
        }
    }
    Ok(())
}

fn remove_subtree(out: &mut Plan, index: &Index<'_>, live: &Live, path: String) {
    out.removes.push(Remove {
        id: live.id,
        path: path.clone(),
    });
    for kid in index.kids(live.id) {
        remove_subtree(out, index, kid, join(Some(&path), &kid.name));
    }
}

/// The fields of `live` that differ from the document, and the patch that
/// makes them equal.
fn diff(node: &OrgNode, live: &Live) -> (Vec<&'static str>, WorkspacePatch) {
    let mut fields = Vec::new();
    let mut patch = WorkspacePatch::default();
    let role = node.role.as_ref().map(|r| r.as_str().to_owned());
    if role != live.role {
        fields.push("role");
        patch.role = Some(role);
    }
    if node.tier != live.tier {
        fields.push("tier");
        patch.tier = Some(node.tier);
    }
    if node.runtime != live.runtime {
        fields.push("runtime");
        patch.runtime = Some(node.runtime.clone());
    }
    if node.env != live.env {
        fields.push("env");
        patch.env = Some(node.env.clone());
    }
    if node.compute != live.compute {
        fields.push("compute");
        patch.compute = Some(node.compute);
    }
    (fields, patch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::org::document::{Format, parse};
    use expect_test::{Expect, expect};

    /// The live org, written as a YAML tree like a document; workspace `n`
    /// (in document order, from 1) gets the id `n`.
    fn live_from(yaml: &str) -> Vec<Live> {
        fn walk(out: &mut Vec<Live>, n: &OrgNode, parent: Option<Uuid>) {
            let id = Uuid::from_u128(out.len() as u128 + 1);
            out.push(Live {
                id,
                parent_id: parent,
                name: n.name.as_str().to_owned(),
                role: n.role.as_ref().map(|r| r.as_str().to_owned()),
                tier: n.tier,
                runtime: n.runtime.clone(),
                env: n.env.clone(),
                compute: n.compute,
            });
            for c in &n.children {
                walk(out, c, Some(id));
            }
        }
        let mut out = Vec::new();
        for tree in yaml.split("\n---\n").filter(|t| !t.trim().is_empty()) {
            walk(
                &mut out,
                &parse(Format::Yaml, tree.as_bytes()).unwrap(),
                None,
            );
        }
        out
    }

    fn short(id: Uuid) -> u128 {
        id.as_u128()
    }

    /// Plans `doc` against the `live` org (several trees separated by
    /// `---`) and shows one intent a line: `+ path (parent)`,
    /// `~ path #id [fields]`, `- path #id`, then `= unchanged`.
    fn check(mode: Mode, doc: &str, live: &str, expect: Expect) {
        let doc = parse(Format::Yaml, doc.as_bytes()).unwrap();
        let got = match plan(&doc, &live_from(live), mode) {
            Err(a) => format!(
                "ambiguous {} {:?}",
                a.path,
                a.ids.iter().map(|i| short(*i)).collect::<Vec<_>>()
            ),
            Ok(p) => {
                let mut out = String::new();
                for c in &p.creates {
                    let parent = match c.parent {
                        Parent::Top => "top".to_owned(),
                        Parent::Live(id) => format!("#{}", short(id)),
                        Parent::New(i) => format!("new {}", p.creates[i].path),
                    };
                    out.push_str(&format!("+ {} ({parent})\n", c.path));
                }
                for u in &p.updates {
                    out.push_str(&format!(
                        "~ {} #{} [{}]\n",
                        u.path,
                        short(u.id),
                        u.fields.join(", ")
                    ));
                }
                for r in &p.removes {
                    out.push_str(&format!("- {} #{}\n", r.path, short(r.id)));
                }
                out.push_str(&format!("= {}\n", p.unchanged));
                out
            }
        };
        expect.assert_eq(&got);
    }

    use Mode::{Merge, Reconcile};

    #[test]
    fn empty_org_creates_everything() {
        check(
            Merge,
            "name: root\nchildren: [{name: a, children: [{name: b}]}, {name: c}]",
            "",
            expect![[r#"
                + root (top)
                + root/a (new root)
                + root/a/b (new root/a)
                + root/c (new root)
                = 0
            "#]],
        );
    }

    #[test]
    fn same_tree_is_unchanged() {
        let t = "name: root\ntier: 3\nchildren: [{name: a, env: {K: v}}]";
        check(
            Merge,
            t,
            t,
            expect![[r#"
            = 2
        "#]],
        );
        check(
            Reconcile,
            t,
            t,
            expect![[r#"
            = 2
        "#]],
        );
    }

    #[test]
    fn missing_child_is_created_under_the_live_parent() {
        check(
            Merge,
            "name: root\nchildren: [{name: a}, {name: b}]",
            "name: root\nchildren: [{name: a}]",
            expect![[r#"
                + root/b (#1)
                = 2
            "#]],
        );
    }

    #[test]
    fn changed_fields_are_listed() {
        check(
            Merge,
            "name: root\nrole: lead\ntier: 1\nruntime: {command: [sleep, '1']}\nenv: {A: b}\ncompute: {data_persistence: ephemeral}",
            "name: root",
            expect![[r#"
                ~ root #1 [role, tier, runtime, env, compute]
                = 0
            "#]],
        );
    }

    #[test]
    fn an_absent_field_means_its_default() {
        // The document says the whole workspace: leaving out tier is tier 2.
        check(
            Merge,
            "name: root",
            "name: root\ntier: 4\nrole: x\ncompute: {volume: {size_gb: 2}}",
            expect![[r#"
                ~ root #1 [role, tier, compute]
                = 0
            "#]],
        );
    }

    #[test]
    fn merge_keeps_what_the_document_does_not_name() {
        check(
            Merge,
            "name: root",
            "name: root\nchildren: [{name: a, children: [{name: b}]}]",
            expect![[r#"
                = 1
            "#]],
        );
    }

    #[test]
    fn reconcile_removes_whole_unnamed_subtrees() {
        check(
            Reconcile,
            "name: root\nchildren: [{name: c}]",
            "name: root\nchildren: [{name: a, children: [{name: b}]}, {name: c}]",
            expect![[r#"
                - root/a #2
                - root/a/b #3
                = 2
            "#]],
        );
    }

    #[test]
    fn reconcile_never_touches_other_trees() {
        check(
            Reconcile,
            "name: root",
            "name: other\nchildren: [{name: x}]\n---\nname: root\nchildren: [{name: y}]",
            expect![[r#"
                - root/y #4
                = 1
            "#]],
        );
    }

    #[test]
    fn a_rename_is_a_create_and_in_reconcile_a_remove() {
        check(
            Reconcile,
            "name: root\nchildren: [{name: renamed, children: [{name: kid}]}]",
            "name: root\nchildren: [{name: old, children: [{name: kid}]}]",
            expect![[r#"
                + root/renamed (#1)
                + root/renamed/kid (new root/renamed)
                - root/old #2
                - root/old/kid #3
                = 1
            "#]],
        );
    }

    #[test]
    fn a_new_root_name_is_a_new_tree() {
        check(
            Reconcile,
            "name: fresh",
            "name: root\nchildren: [{name: a}]",
            expect![[r#"
                + fresh (top)
                = 0
            "#]],
        );
    }

    #[test]
    fn matching_is_by_path_not_by_name_alone() {
        // Two workspaces named "worker" under different parents.
        check(
            Merge,
            "name: root\nchildren: [{name: a, children: [{name: worker, tier: 3}]}, {name: b, children: [{name: worker}]}]",
            "name: root\nchildren: [{name: a, children: [{name: worker}]}, {name: b, children: [{name: worker}]}]",
            expect![[r#"
                ~ root/a/worker #3 [tier]
                = 4
            "#]],
        );
    }

    #[test]
    fn live_siblings_sharing_a_name_are_ambiguous_only_when_named() {
        let live = "name: root\n---\nname: root\nchildren: [{name: a}]";
        check(
            Merge,
            "name: root",
            live,
            expect![[r#"ambiguous root [1, 2]"#]],
        );
        check(
            Merge,
            "name: other",
            live,
            expect![[r#"
            + other (top)
            = 0
        "#]],
        );
    }

    #[test]
    fn role_empty_is_no_role() {
        check(
            Merge,
            "name: root\nrole: ''",
            "name: root",
            expect![[r#"
            = 1
        "#]],
        );
    }
}
