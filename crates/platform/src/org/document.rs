//! The org document: one tree of workspaces (`name`, `role`, `tier`,
//! `runtime`, `compute`, `env`, `children`), read from YAML or JSON into the
//! same typed tree, and written back as YAML by the export.
//!
//! Both formats are first read into [`Node`], a small tree of values that
//! keeps the line each value starts on (YAML only), then every workspace of
//! it is checked by the same parsers as `POST /workspaces`. A rejected
//! document names the node's path (`root/research/scraper`) and, for YAML,
//! the line.
//!
//! YAML aliases are refused outright rather than expanded: a "billion
//! laughs" document is a short input whose expansion is exponential, and no
//! org tree needs one. Without aliases the tree is never bigger than the
//! body, which the API caps at 1 MiB.

use crate::dto::CreateWorkspaceRequest;
use holdfast_controller::CreateRequest as ParsedCreate;
use holdfast_domain::{Compute, Env, Program, Role, Runtime, Tier, WorkspaceName};
use saphyr_parser::{Event, Parser, ScalarStyle};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::collections::HashSet;
use std::fmt;

/// The deepest tree accepted: the root is level 1.
pub const MAX_DEPTH: usize = 32;
/// The most workspaces one document may name.
pub const MAX_NODES: usize = 2000;
/// How deep YAML or JSON containers may nest. A tree of [`MAX_DEPTH`] levels
/// needs about twice that (a mapping and its `children` sequence per level,
/// plus `compute.volume`); anything deeper is refused while reading, before
/// it costs anything.
const MAX_NESTING: usize = 128;

/// The fields a workspace of the document may have.
const FIELDS: &[&str] = &[
    "name", "role", "tier", "runtime", "compute", "env", "children",
];

/// One workspace of the document, parsed into domain types.
#[derive(Debug, Clone, PartialEq)]
pub struct OrgNode {
    pub name: WorkspaceName,
    pub role: Option<Role>,
    pub tier: Tier,
    pub runtime: Runtime,
    pub env: Env,
    pub compute: Compute,
    pub children: Vec<OrgNode>,
    /// The line its mapping starts on (YAML only), for messages.
    pub line: Option<usize>,
}

/// A rejected document: what was wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocError {
    /// A stable snake_case code (`invalid_field`, `duplicate_name`, …).
    pub code: &'static str,
    pub message: String,
    /// The path of names of the workspace concerned, when there is one.
    pub path: Option<String>,
    /// The line in a YAML document.
    pub line: Option<usize>,
    /// The field concerned (`compute.data_persistence`).
    pub field: Option<String>,
}

impl DocError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        DocError {
            code,
            message: message.into(),
            path: None,
            line: None,
            field: None,
        }
    }

    fn at(mut self, path: &str, line: Option<usize>) -> Self {
        self.path = Some(path.to_owned());
        self.line = self.line.or(line);
        self
    }

    fn line(mut self, line: Option<usize>) -> Self {
        self.line = line;
        self
    }
}

impl fmt::Display for DocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.path, self.line) {
            (Some(p), Some(l)) => write!(f, "{p} (line {l}): {}", self.message),
            (Some(p), None) => write!(f, "{p}: {}", self.message),
            (None, Some(l)) => write!(f, "line {l}: {}", self.message),
            (None, None) => f.write_str(&self.message),
        }
    }
}

/// The format of a document, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

/// A value of the document with the line it starts on.
#[derive(Debug, Clone, PartialEq)]
struct Node {
    line: Option<usize>,
    raw: Raw,
}

#[derive(Debug, Clone, PartialEq)]
enum Raw {
    Null,
    Bool(bool),
    Int(i64),
    /// Floats are kept as written: no field takes one, and the error then
    /// shows what was sent.
    Float(String),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in document order, each with the line of its key.
    Map(Vec<(String, Option<usize>, Node)>),
}

impl Node {
    /// The same value as JSON, for the domain parsers.
    fn to_json(&self) -> Value {
        match &self.raw {
            Raw::Null => Value::Null,
            Raw::Bool(b) => Value::Bool(*b),
            Raw::Int(i) => Value::from(*i),
            Raw::Float(s) => s
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map_or_else(|| Value::String(s.clone()), Value::Number),
            Raw::Str(s) => Value::String(s.clone()),
            Raw::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            Raw::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, _, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// The line of the value a dotted field path (`compute.volume.size_gb`,
    /// `runtime.command[1]`) names, or of the deepest part of it that exists.
    fn line_of(&self, field: &str) -> Option<usize> {
        let mut cur = self;
        let mut line = self.line;
        for part in field.split('.') {
            let (key, index) = match part.split_once('[') {
                Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
                None => (part, None),
            };
            let Raw::Map(entries) = &cur.raw else { break };
            let Some((_, key_line, value)) = entries.iter().find(|(k, _, _)| k == key) else {
                break;
            };
            line = key_line.or(line);
            cur = value;
            if let (Some(i), Raw::Seq(items)) = (index, &cur.raw)
                && let Some(item) = items.get(i)
            {
                line = item.line.or(line);
                cur = item;
            }
        }
        line
    }
}

/// Parses a document of either format into its tree of workspaces.
pub fn parse(format: Format, bytes: &[u8]) -> Result<OrgNode, DocError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        DocError::new(
            "invalid_document",
            format!("the document is not UTF-8 text: {e}"),
        )
    })?;
    let node = match format {
        Format::Yaml => read_yaml(text)?,
        Format::Json => read_json(text)?,
    };
    let mut count = 0;
    to_tree(&node, None, 0, 1, &mut count)
}

/// Reads YAML into a [`Node`], refusing aliases, unknown tags, several
/// documents and deep nesting as they come.
fn read_yaml(text: &str) -> Result<Node, DocError> {
    enum Frame {
        Seq(Option<usize>, Vec<Node>),
        Map(
            Option<usize>,
            Vec<(String, Option<usize>, Node)>,
            Option<(String, Option<usize>)>,
        ),
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut done: Option<Node> = None;
    let mut documents = 0;
    let mut parser = Parser::new_from_str(text);
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| {
            DocError::new("invalid_document", format!("not valid YAML: {}", e.info()))
                .line(Some(e.marker().line()))
        })?;
        let line = Some(span.start.line());
        let value = match event {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => continue,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(DocError::new(
                        "invalid_document",
                        "the document must hold one tree; found a second YAML document (---)",
                    )
                    .line(line));
                }
                continue;
            }
            Event::Alias(_) => {
                return Err(DocError::new(
                    "alias_not_allowed",
                    "YAML aliases (*name) are not accepted: write the value out in full",
                )
                .line(line));
            }
            Event::SequenceStart(_, ref tag) | Event::MappingStart(_, ref tag) => {
                let is_seq = matches!(event, Event::SequenceStart(..));
                if let Some(tag) = tag
                    && !(tag.is_yaml_core_schema()
                        && tag.suffix == if is_seq { "seq" } else { "map" })
                {
                    return Err(unsupported_tag(&tag.handle, &tag.suffix, line));
                }
                if stack.len() >= MAX_NESTING {
                    return Err(DocError::new(
                        "too_deep",
                        format!("the document nests deeper than {MAX_NESTING} levels"),
                    )
                    .line(line));
                }
                stack.push(if is_seq {
                    Frame::Seq(line, Vec::new())
                } else {
                    Frame::Map(line, Vec::new(), None)
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq(line, items)) => Node {
                    line,
                    raw: Raw::Seq(items),
                },
                Some(Frame::Map(line, entries, _)) => Node {
                    line,
                    raw: Raw::Map(entries),
                },
                None => continue,
            },
            Event::Scalar(text, style, _, tag) => {
                let raw = match tag {
                    Some(tag) if tag.is_yaml_core_schema() && tag.suffix == "str" => {
                        Raw::Str(text.into_owned())
                    }
                    Some(tag)
                        if tag.is_yaml_core_schema()
                            && matches!(tag.suffix.as_str(), "int" | "float" | "bool" | "null") =>
                    {
                        resolve_plain(&text)
                    }
                    Some(tag) => return Err(unsupported_tag(&tag.handle, &tag.suffix, line)),
                    None if style == ScalarStyle::Plain => resolve_plain(&text),
                    None => Raw::Str(text.into_owned()),
                };
                Node { line, raw }
            }
        };
        // A finished value goes into its container, or is the document.
        match stack.last_mut() {
            None => done = Some(value),
            Some(Frame::Seq(_, items)) => items.push(value),
            Some(Frame::Map(_, entries, pending)) => match pending.take() {
                None => {
                    let key = match value.raw {
                        Raw::Str(s) => s,
                        Raw::Null | Raw::Bool(_) | Raw::Int(_) | Raw::Float(_) => {
                            scalar_text(&value.raw)
                        }
                        Raw::Seq(_) | Raw::Map(_) => {
                            return Err(DocError::new(
                                "invalid_document",
                                "mapping keys must be plain strings",
                            )
                            .line(value.line));
                        }
                    };
                    if entries.iter().any(|(k, _, _)| *k == key) {
                        return Err(DocError::new(
                            "duplicate_key",
                            format!("the key {key:?} appears twice in one mapping"),
                        )
                        .line(value.line));
                    }
                    *pending = Some((key, value.line));
                }
                Some((key, key_line)) => entries.push((key, key_line, value)),
            },
        }
    }
    done.ok_or_else(|| DocError::new("invalid_document", "the document is empty"))
}

fn unsupported_tag(handle: &str, suffix: &str, line: Option<usize>) -> DocError {
    DocError::new(
        "invalid_document",
        format!("YAML tags such as {handle}{suffix} are not accepted"),
    )
    .line(line)
}

/// The YAML 1.2 core schema's reading of a plain scalar.
fn resolve_plain(s: &str) -> Raw {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Raw::Null,
        "true" | "True" | "TRUE" => return Raw::Bool(true),
        "false" | "False" | "FALSE" => return Raw::Bool(false),
        _ => {}
    }
    let int = if let Some(hex) = s.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()
    } else if let Some(oct) = s.strip_prefix("0o") {
        i64::from_str_radix(oct, 8).ok()
    } else if s
        .trim_start_matches(['-', '+'])
        .chars()
        .all(|c| c.is_ascii_digit())
        && s.chars().any(|c| c.is_ascii_digit())
    {
        s.parse::<i64>().ok()
    } else {
        None
    };
    if let Some(i) = int {
        return Raw::Int(i);
    }
    let lower = s.to_ascii_lowercase();
    let special = matches!(lower.trim_start_matches(['-', '+']), ".inf" | ".nan");
    let numeric = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        && s.chars().any(|c| c.is_ascii_digit())
        && s.parse::<f64>().is_ok();
    if special || numeric {
        Raw::Float(s.to_owned())
    } else {
        Raw::Str(s.to_owned())
    }
}

fn scalar_text(raw: &Raw) -> String {
    match raw {
        Raw::Null => "null".to_owned(),
        Raw::Bool(b) => b.to_string(),
        Raw::Int(i) => i.to_string(),
        Raw::Float(s) | Raw::Str(s) => s.clone(),
        Raw::Seq(_) | Raw::Map(_) => String::new(),
    }
}

/// Reads JSON into a [`Node`]. Duplicate keys are refused (a JSON object
/// that names a key twice would otherwise keep the last one silently);
/// serde_json's own recursion limit bounds the nesting.
fn read_json(text: &str) -> Result<Node, DocError> {
    serde_json::from_str::<Node>(text).map_err(|e| {
        let msg = e.to_string();
        let code = if msg.starts_with("duplicate key") {
            "duplicate_key"
        } else {
            "malformed_json"
        };
        DocError::new(code, format!("not valid JSON: {msg}"))
    })
}

impl<'de> serde::Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        fn node(raw: Raw) -> Node {
            Node { line: None, raw }
        }
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(node(Raw::Null))
            }
            fn visit_bool<E>(self, b: bool) -> Result<Node, E> {
                Ok(node(Raw::Bool(b)))
            }
            fn visit_i64<E>(self, i: i64) -> Result<Node, E> {
                Ok(node(Raw::Int(i)))
            }
            fn visit_u64<E>(self, u: u64) -> Result<Node, E> {
                Ok(node(
                    i64::try_from(u).map_or_else(|_| Raw::Float(u.to_string()), Raw::Int),
                ))
            }
            fn visit_f64<E>(self, f: f64) -> Result<Node, E> {
                Ok(node(Raw::Float(f.to_string())))
            }
            fn visit_str<E>(self, s: &str) -> Result<Node, E> {
                Ok(node(Raw::Str(s.to_owned())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Node>()? {
                    items.push(item);
                }
                Ok(node(Raw::Seq(items)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries: Vec<(String, Option<usize>, Node)> = Vec::new();
                let mut seen = HashSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(de::Error::custom(format_args!(
                            "duplicate key {key:?} in one object"
                        )));
                    }
                    let value = map.next_value::<Node>()?;
                    entries.push((key, None, value));
                }
                Ok(node(Raw::Map(entries)))
            }
        }
        d.deserialize_any(V)
    }
}

/// Checks one workspace of the document (and, recursively, its children)
/// with the parsers of `POST /workspaces`.
fn to_tree(
    node: &Node,
    parent_path: Option<&str>,
    index: usize,
    depth: usize,
    count: &mut usize,
) -> Result<OrgNode, DocError> {
    // Until its name is known, a node is named by its place.
    let place = match parent_path {
        Some(p) => format!("{p}/children[{index}]"),
        None => "(root)".to_owned(),
    };
    *count += 1;
    if *count > MAX_NODES {
        return Err(DocError::new(
            "too_many_nodes",
            format!("the document names more than {MAX_NODES} workspaces"),
        )
        .at(&place, node.line));
    }
    let Raw::Map(entries) = &node.raw else {
        return Err(
            DocError::new("invalid_field", "a workspace must be a mapping with a name")
                .at(&place, node.line),
        );
    };
    if let Some((key, line, _)) = entries
        .iter()
        .find(|(k, _, _)| !FIELDS.contains(&k.as_str()))
    {
        let mut e = DocError::new(
            "unknown_field",
            format!("unknown field {key:?}; allowed: {}", FIELDS.join(", ")),
        )
        .at(&place, *line);
        e.field = Some(key.clone());
        return Err(e);
    }
    let get = |k: &str| {
        entries
            .iter()
            .find(|(key, _, _)| key == k)
            .map(|(_, _, v)| v.to_json())
    };
    // The very parsing of `POST /workspaces`, so that the document accepts
    // exactly what the API does.
    let request = CreateWorkspaceRequest {
        name: get("name").unwrap_or(Value::Null),
        role: get("role"),
        parent_id: None,
        tier: get("tier"),
        runtime: get("runtime"),
        env: get("env"),
        compute: get("compute"),
        org_id: None,
        from_snapshot: None,
    };
    if get("name").is_none() {
        let mut e = DocError::new("invalid_field", "name: is required").at(&place, node.line);
        e.field = Some("name".to_owned());
        return Err(e);
    }
    let parsed = ParsedCreate::try_from(request).map_err(|e| {
        let field = e
            .extra
            .get("field")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let line = field.as_deref().and_then(|f| node.line_of(f));
        // The path names the workspace once its name parsed.
        let name = get("name")
            .as_ref()
            .and_then(Value::as_str)
            .and_then(|n| WorkspaceName::parse(n).ok());
        let path = match (&name, field.as_deref()) {
            (Some(n), f) if f != Some("name") => join(parent_path, n.as_str()),
            _ => place.clone(),
        };
        let mut d = DocError::new("invalid_field", e.message).at(&path, line.or(node.line));
        d.field = field;
        d
    })?;
    let path = join(parent_path, parsed.name.as_str());
    if depth > MAX_DEPTH {
        return Err(DocError::new(
            "too_deep",
            format!("the tree is deeper than {MAX_DEPTH} levels"),
        )
        .at(&path, node.line));
    }
    let mut children = Vec::new();
    if let Some((_, line, kids)) = entries.iter().find(|(k, _, _)| k == "children") {
        let items: &[Node] = match &kids.raw {
            Raw::Null => &[],
            Raw::Seq(items) => items,
            _ => {
                let mut e =
                    DocError::new("invalid_field", "children: must be a list of workspaces")
                        .at(&path, *line);
                e.field = Some("children".to_owned());
                return Err(e);
            }
        };
        let mut names = HashSet::new();
        for (i, item) in items.iter().enumerate() {
            let child = to_tree(item, Some(&path), i, depth + 1, count)?;
            if !names.insert(child.name.as_str().to_owned()) {
                return Err(DocError::new(
                    "duplicate_name",
                    format!(
                        "two children of {path:?} are named {:?}; names must be unique among siblings",
                        child.name.as_str()
                    ),
                )
                .at(&join(Some(&path), child.name.as_str()), item.line));
            }
            children.push(child);
        }
    }
    Ok(OrgNode {
        name: parsed.name,
        role: parsed.role,
        tier: parsed.tier,
        runtime: parsed.runtime,
        env: parsed.env,
        compute: parsed.compute,
        children,
        line: node.line,
    })
}

/// The path of a workspace named `name` under `parent`.
pub fn join(parent: Option<&str>, name: &str) -> String {
    match parent {
        Some(p) => format!("{p}/{name}"),
        None => name.to_owned(),
    }
}

/// Writes a tree as a YAML document that [`parse`] reads back as the same
/// tree. Fields at their create default (no role, no env, auto compute) are
/// left out; tier and runtime are always written, so that the export says
/// what runs.
pub fn to_yaml(root: &OrgNode) -> String {
    let mut out = String::new();
    write_node(&mut out, root, 0, false);
    out
}

fn write_node(out: &mut String, node: &OrgNode, indent: usize, in_list: bool) {
    let pad = " ".repeat(indent);
    // The first line of a list item follows its "- ".
    let first = if in_list { String::new() } else { pad.clone() };
    out.push_str(&format!("{first}name: {}\n", scalar(node.name.as_str())));
    if let Some(role) = &node.role {
        out.push_str(&format!("{pad}role: {}\n", scalar(role.as_str())));
    }
    out.push_str(&format!("{pad}tier: {}\n", node.tier.get()));
    match &node.runtime.program {
        Program::Template(t) => {
            out.push_str(&format!("{pad}runtime:\n{pad}  template: {}\n", scalar(t)));
        }
        Program::Command(argv) => {
            let items: Vec<String> = argv.iter().map(|a| quoted(a)).collect();
            out.push_str(&format!(
                "{pad}runtime:\n{pad}  command: [{}]\n",
                items.join(", ")
            ));
        }
    }
    if let Some(image) = &node.runtime.image {
        out.push_str(&format!("{pad}  image: {}\n", quoted(image.as_str())));
    }
    if node.compute != Compute::default() {
        out.push_str(&format!("{pad}compute:\n"));
        if let Some(mode) = node.compute.data_persistence {
            out.push_str(&format!("{pad}  data_persistence: {}\n", mode.as_str()));
        }
        if let Some(volume) = node.compute.volume {
            out.push_str(&format!(
                "{pad}  volume:\n{pad}    size_gb: {}\n",
                volume.size_gb
            ));
        }
    }
    if node.env.iter().next().is_some() {
        out.push_str(&format!("{pad}env:\n"));
        for (k, v) in node.env.iter() {
            out.push_str(&format!("{pad}  {k}: {}\n", quoted(v)));
        }
    }
    if !node.children.is_empty() {
        out.push_str(&format!("{pad}children:\n"));
        for child in &node.children {
            out.push_str(&format!("{pad}  - "));
            write_node(out, child, indent + 4, true);
        }
    }
}

/// A plain scalar when it reads back as the same string, else quoted.
fn scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' '))
        && !s.starts_with(['-', '.', ' '])
        && !s.ends_with(' ')
        && resolve_plain(s) == Raw::Str(s.to_owned());
    if plain { s.to_owned() } else { quoted(s) }
}

/// A YAML double-quoted scalar: JSON's string escapes are a subset of
/// YAML's, so serde_json writes one.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    /// Parses a YAML document and shows the tree (one workspace a line) or
    /// the error.
    fn check(yaml: &str, expect: Expect) {
        expect.assert_eq(&show(parse(Format::Yaml, yaml.as_bytes())));
    }

    fn check_json(json: &str, expect: Expect) {
        expect.assert_eq(&show(parse(Format::Json, json.as_bytes())));
    }

    fn show(r: Result<OrgNode, DocError>) -> String {
        match r {
            Ok(tree) => {
                let mut out = String::new();
                fn walk(out: &mut String, n: &OrgNode, path: &str) {
                    let path = join(
                        if path.is_empty() { None } else { Some(path) },
                        n.name.as_str(),
                    );
                    out.push_str(&format!(
                        "{path} tier={} role={:?} runtime={:?} env={:?} compute={}\n",
                        n.tier.get(),
                        n.role.as_ref().map(Role::as_str),
                        n.runtime,
                        n.env.iter().collect::<Vec<_>>(),
                        serde_json::to_string(&n.compute).unwrap(),
                    ));
                    for c in &n.children {
                        walk(out, c, &path);
                    }
                }
                walk(&mut out, &tree, "");
                out
            }
            Err(e) => format!("{} {e} [field={:?}]", e.code, e.field),
        }
    }

    #[test]
    fn a_small_tree() {
        check(
            "name: root\nrole: lead\nchildren:\n  - name: research\n    tier: 3\n    children:\n      - name: scraper\n        compute: {data_persistence: ephemeral}\n",
            expect![[r#"
                root tier=2 role=Some("lead") runtime=Template("holdfast-runtime") env=[] compute={}
                root/research tier=3 role=None runtime=Template("holdfast-runtime") env=[] compute={}
                root/research/scraper tier=2 role=None runtime=Template("holdfast-runtime") env=[] compute={"data_persistence":"ephemeral"}
            "#]],
        );
    }

    #[test]
    fn json_reads_into_the_same_tree() {
        check_json(
            r#"{"name":"root","children":[{"name":"a","env":{"K":"v"},"runtime":{"command":["sleep","1"]}}]}"#,
            expect![[r#"
                root tier=2 role=None runtime=Template("holdfast-runtime") env=[] compute={}
                root/a tier=2 role=None runtime=Command(["sleep", "1"]) env=[("K", "v")] compute={}
            "#]],
        );
    }

    #[test]
    fn bad_persistence_names_path_and_line() {
        check(
            "name: root\nchildren:\n  - name: research\n    children:\n      - name: scraper\n        compute:\n          data_persistence: Persist\n",
            expect![[
                r#"invalid_field root/research/scraper (line 7): compute.data_persistence: must be exactly "persist" or "ephemeral" (omit it, or send "", for auto); got "Persist" [field=Some("compute.data_persistence")]"#
            ]],
        );
        // A YAML boolean is not a mode either.
        check(
            "name: root\ncompute:\n  data_persistence: true\n",
            expect![[
                r#"invalid_field root (line 3): compute.data_persistence: must be exactly "persist" or "ephemeral" (omit it, or send "", for auto); got true [field=Some("compute.data_persistence")]"#
            ]],
        );
    }

    #[test]
    fn unknown_fields() {
        check(
            "name: root\nchildren:\n  - name: a\n    parent_id: x\n",
            expect![[
                r#"unknown_field root/children[0] (line 4): unknown field "parent_id"; allowed: name, role, tier, runtime, compute, env, children [field=Some("parent_id")]"#
            ]],
        );
        check(
            "name: root\ncompute: {size: 1}\n",
            expect![[
                r#"invalid_field root (line 2): compute.size: unknown field; allowed: data_persistence, volume, snapshots [field=Some("compute.size")]"#
            ]],
        );
    }

    #[test]
    fn duplicate_siblings_and_keys() {
        check(
            "name: root\nchildren:\n  - name: a\n  - name: b\n  - name: a\n",
            expect![[
                r#"duplicate_name root/a (line 5): two children of "root" are named "a"; names must be unique among siblings [field=None]"#
            ]],
        );
        // Names are compared after trimming, as the API stores them.
        check(
            "name: root\nchildren:\n  - name: a\n  - name: ' a '\n",
            expect![[
                r#"duplicate_name root/a (line 4): two children of "root" are named "a"; names must be unique among siblings [field=None]"#
            ]],
        );
        check(
            "name: root\nname: other\n",
            expect![[
                r#"duplicate_key line 2: the key "name" appears twice in one mapping [field=None]"#
            ]],
        );
        check_json(
            r#"{"name":"root","name":"x"}"#,
            expect![[
                r#"duplicate_key not valid JSON: duplicate key "name" in one object at line 1 column 21 [field=None]"#
            ]],
        );
    }

    #[test]
    fn aliases_are_refused_at_once() {
        let mut laughs = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for (prev, next) in ["a", "b", "c", "d", "e", "f", "g", "h"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
        {
            laughs.push_str(&format!("{next}: &{next} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
        }
        check(
            &laughs,
            expect![[
                r#"alias_not_allowed line 2: YAML aliases (*name) are not accepted: write the value out in full [field=None]"#
            ]],
        );
        check(
            "name: &n root\nrole: *n\n",
            expect![[
                r#"alias_not_allowed line 2: YAML aliases (*name) are not accepted: write the value out in full [field=None]"#
            ]],
        );
    }

    #[test]
    fn depth_and_size_limits() {
        let deep = |levels: usize| {
            let mut doc = String::new();
            for i in 0..levels {
                // Level i's mapping starts at column 4i, after its "- ".
                let pad = "  ".repeat(i * 2);
                let first = if i == 0 { pad.as_str() } else { "" };
                doc.push_str(&format!("{first}name: n{i}\n{pad}children:\n{pad}  - "));
            }
            doc.push_str("name: leaf\n");
            doc
        };
        // 31 levels plus the leaf: 32, the most accepted.
        assert!(parse(Format::Yaml, deep(31).as_bytes()).is_ok());
        let e = parse(Format::Yaml, deep(32).as_bytes()).unwrap_err();
        assert_eq!((e.code, e.line), ("too_deep", Some(65)), "{e}");
        assert!(e.path.unwrap().ends_with("/n31/leaf"));

        let wide = |n: usize| {
            let mut doc = String::from("name: root\nchildren:\n");
            for i in 0..n {
                doc.push_str(&format!("  - name: c{i}\n"));
            }
            doc
        };
        assert!(parse(Format::Yaml, wide(1999).as_bytes()).is_ok());
        check(
            &wide(2000),
            expect![[
                r#"too_many_nodes root/children[1999] (line 2002): the document names more than 2000 workspaces [field=None]"#
            ]],
        );
        check(
            &format!("{}1{}", "[".repeat(200), "]".repeat(200)),
            expect![[r#"too_deep line 1: the document nests deeper than 128 levels [field=None]"#]],
        );
    }

    #[test]
    fn odd_documents() {
        check(
            "",
            expect![[r#"invalid_document the document is empty [field=None]"#]],
        );
        check(
            "name: a\n---\nname: b\n",
            expect![[
                r#"invalid_document line 2: the document must hold one tree; found a second YAML document (---) [field=None]"#
            ]],
        );
        check(
            "- name: a\n",
            expect![[
                r#"invalid_field (root) (line 1): a workspace must be a mapping with a name [field=None]"#
            ]],
        );
        check(
            "role: x\n",
            expect![[r#"invalid_field (root) (line 1): name: is required [field=Some("name")]"#]],
        );
        check(
            "name: !custom root\n",
            expect![[
                r#"invalid_document line 1: YAML tags such as !custom are not accepted [field=None]"#
            ]],
        );
        check(
            "name: [unclosed\n",
            expect![[
                r#"invalid_document line 2: not valid YAML: while parsing a flow sequence, expected ',' or ']' [field=None]"#
            ]],
        );
        check(
            "name: root\ntier: 5\n",
            expect![[
                r#"invalid_field root (line 2): tier: must be an integer from 1 to 4, got 5 [field=Some("tier")]"#
            ]],
        );
        check(
            "name: root\ntier: \"2\"\n",
            expect![[
                r#"invalid_field root (line 2): tier: must be an integer from 1 to 4, got "2" [field=Some("tier")]"#
            ]],
        );
        check(
            "name: root\nruntime: {command: [sh, 1]}\n",
            expect![[
                r#"invalid_field root (line 2): runtime.command[1]: must be a string [field=Some("runtime.command[1]")]"#
            ]],
        );
        check(
            "name: \"a b\"\nchildren: x\n",
            expect![[
                r#"invalid_field a b (line 2): children: must be a list of workspaces [field=Some("children")]"#
            ]],
        );
    }

    #[test]
    fn the_export_reads_back_as_the_same_tree() {
        let doc = "name: \"root: 1\"\nrole: 'says \"hi\"'\ntier: 4\nruntime: {command: [sh, -c, \"echo 'x' # y\"]}\nenv: {A: '007', B: \"\"}\ncompute: {data_persistence: persist, volume: {size_gb: 3}}\nchildren:\n  - name: \"true\"\n  - name: \"12\"\n    children: [{name: \" é \"}]\n  - name: null-ish\n";
        let tree = parse(Format::Yaml, doc.as_bytes()).unwrap();
        let yaml = to_yaml(&tree);
        expect![[r#"
            name: "root: 1"
            role: "says \"hi\""
            tier: 4
            runtime:
              command: ["sh", "-c", "echo 'x' # y"]
            compute:
              data_persistence: persist
              volume:
                size_gb: 3
            env:
              A: "007"
              B: ""
            children:
              - name: "true"
                tier: 2
                runtime:
                  template: holdfast-runtime
              - name: "12"
                tier: 2
                runtime:
                  template: holdfast-runtime
                children:
                  - name: "é"
                    tier: 2
                    runtime:
                      template: holdfast-runtime
              - name: null-ish
                tier: 2
                runtime:
                  template: holdfast-runtime
        "#]]
        .assert_eq(&yaml);
        let mut again = parse(Format::Yaml, yaml.as_bytes()).unwrap();
        // Lines differ between the two texts; nothing else may.
        fn clear_lines(n: &mut OrgNode) {
            n.line = None;
            n.children.iter_mut().for_each(clear_lines);
        }
        let mut tree = tree;
        clear_lines(&mut tree);
        clear_lines(&mut again);
        assert_eq!(again, tree);
    }
}
