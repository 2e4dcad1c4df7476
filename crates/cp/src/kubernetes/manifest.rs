//! The objects the Kubernetes backend creates, as pure functions of what to
//! run (SPEC §14): the workspace Pod, its PersistentVolumeClaim and the
//! helper Pod that reads a claim. Pinned by golden files
//! (`deploy/kubernetes/golden/`) that CI validates against the API schemas.
//!
//! **Architecture Invariant:** no object built here has `ownerReferences`:
//! the garbage collector must never be able to delete a claim (or a Pod
//! that mounts one) because some other object went away.

use crate::process::Spawn;
use holdfast_domain::{DataPersistence, ImageRef, Tier};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const LABEL_WORKSPACE: &str = "holdfast.io/workspace";
pub const LABEL_ORG: &str = "holdfast.io/org";
/// `workspace` (its Pod), `data` (its claim, and the PV once patched) or
/// `helper`.
pub const LABEL_KIND: &str = "holdfast.io/kind";
/// `persist` or `ephemeral`, on a workspace Pod.
pub const LABEL_DATA: &str = "holdfast.io/data";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// The instance a Pod runs (a new one at every start; an adopted Pod gets
/// the new id patched in). Not part of the config hash.
pub const ANNOTATION_INSTANCE: &str = "holdfast.io/instance";
/// The hash of everything else the Pod was built from: a start whose hash
/// differs recreates the Pod.
pub const ANNOTATION_CONFIG_HASH: &str = "holdfast.io/config-hash";
/// The tier a Pod was sized for, and the requested size of a claim.
pub const ANNOTATION_TIER: &str = "holdfast.io/tier";
pub const ANNOTATION_SIZE_GB: &str = "holdfast.io/size-gb";

/// Where a workspace sees its data (and works).
pub const DATA_DIR: &str = "/data";
/// Where the image holds the holdfast binary (the built-in runtime).
pub const RUNTIME_EXE: &str = "/opt/holdfast/holdfast";
/// The uid and gid a workspace runs as: never root.
pub const RUN_AS: i64 = 65532;
/// The claim size when the workspace names none.
pub const DEFAULT_SIZE_GB: u16 = 10;

/// The workspace's Pod, and (persist) its claim: one fixed name each, so
/// the API server's AlreadyExists gives at most one of either.
pub fn pod_name(workspace_id: Uuid) -> String {
    format!("ws-{workspace_id}")
}

pub fn claim_name(workspace_id: Uuid) -> String {
    format!("ws-{workspace_id}")
}

/// Helper Pods carry a random suffix: several reads of one claim may run.
pub fn helper_name(workspace_id: Uuid, n: Uuid) -> String {
    // Pod names are at most 63 characters for their hostname: 39 + 8 + 12.
    format!("ws-{workspace_id}-helper-{}", &n.simple().to_string()[..12])
}

fn mode_str(mode: DataPersistence) -> &'static str {
    match mode {
        DataPersistence::Persist => "persist",
        DataPersistence::Ephemeral => "ephemeral",
    }
}

/// The resources of a tier (SPEC §13): memory is requested and capped at
/// the tier's limit; CPU weight becomes a CPU request (weight 100 = one
/// core's share), with no CPU cap, which is what a cgroup weight means.
/// A per-Pod process limit is the kubelet's (`podPidsLimit`), not the
/// Pod's: it is recorded as an annotation only.
pub fn tier_resources(tier: Tier) -> serde_json::Value {
    let (memory, _pids, weight) = crate::cgroup::tier_limits(tier);
    let memory = format!("{}Mi", memory >> 20);
    let cpu = format!("{}m", weight * 10);
    json!({
        "requests": { "memory": memory, "cpu": cpu },
        "limits": { "memory": memory },
    })
}

/// A container's confinement: not root, no privilege escalation, every
/// capability dropped, the runtime's default seccomp profile, a read-only
/// root (the data dir and `/tmp` are the writable mounts).
fn container_security() -> serde_json::Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "allowPrivilegeEscalation": false,
        "privileged": false,
        "readOnlyRootFilesystem": true,
        "capabilities": { "drop": ["ALL"] },
        "seccompProfile": { "type": "RuntimeDefault" },
    })
}

fn pod_security() -> serde_json::Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        // The claim's files belong to the workspace's group.
        "fsGroup": RUN_AS,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": { "type": "RuntimeDefault" },
    })
}

/// The workspace's Pod. Its config hash covers everything but the
/// instance annotation, so a start with the same config can adopt it.
pub fn workspace_pod(spec: &Spawn, org_id: Uuid, image: &ImageRef) -> Pod {
    let ws = spec.workspace_id.to_string();
    // The workspace's env first: the variables holdfast owns win.
    let mut env: std::collections::BTreeMap<String, String> = spec.env.clone();
    env.insert("HOME".to_owned(), DATA_DIR.to_owned());
    env.insert("HOLDFAST_DATA_DIR".to_owned(), DATA_DIR.to_owned());
    env.insert("HOLDFAST_WORKSPACE_ID".to_owned(), ws.clone());
    env.insert("TMPDIR".to_owned(), "/tmp".to_owned());
    let env: Vec<_> = env
        .into_iter()
        .map(|(name, value)| json!({ "name": name, "value": value }))
        .collect();
    let data = match spec.mode {
        DataPersistence::Persist => json!({
            "name": "data",
            "persistentVolumeClaim": { "claimName": claim_name(spec.workspace_id) },
        }),
        // Ephemeral data lives and dies with the Pod: a new Pod per start.
        DataPersistence::Ephemeral => json!({ "name": "data", "emptyDir": {} }),
    };
    let value = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(spec.workspace_id),
            "labels": {
                LABEL_WORKSPACE: ws,
                LABEL_ORG: org_id.to_string(),
                LABEL_KIND: "workspace",
                LABEL_DATA: mode_str(spec.mode),
                LABEL_MANAGED_BY: "holdfast",
            },
            "annotations": {
                ANNOTATION_TIER: spec.tier.get().to_string(),
            },
        },
        "spec": {
            // A bare Pod: no controller recreates it behind holdfast's back,
            // and no rolling update ever runs two Pods on one claim.
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "terminationGracePeriodSeconds": 10,
            "securityContext": pod_security(),
            "containers": [{
                "name": "workspace",
                "image": image.as_str(),
                // Local images (no registry) must not be pulled.
                "imagePullPolicy": "IfNotPresent",
                "command": [spec.argv[0].clone()],
                "args": spec.argv[1..].to_vec(),
                "workingDir": DATA_DIR,
                "env": env,
                "resources": tier_resources(spec.tier),
                "securityContext": container_security(),
                "volumeMounts": [
                    { "name": "data", "mountPath": DATA_DIR },
                    { "name": "tmp", "mountPath": "/tmp" },
                ],
            }],
            "volumes": [
                data,
                { "name": "tmp", "emptyDir": { "sizeLimit": "64Mi" } },
            ],
        },
    });
    let mut pod: Pod = serde_json::from_value(value).expect("a well-formed Pod");
    let hash = config_hash(&pod);
    pod.metadata
        .annotations
        .get_or_insert_default()
        .insert(ANNOTATION_CONFIG_HASH.to_owned(), hash);
    pod.metadata
        .annotations
        .get_or_insert_default()
        .insert(ANNOTATION_INSTANCE.to_owned(), spec.instance_id.clone());
    pod
}

/// The sha256 of the Pod's labels, tier and spec (canonical JSON: maps are
/// ordered), in hex: what decides between adopting and recreating.
pub fn config_hash(pod: &Pod) -> String {
    let input = json!({
        "labels": pod.metadata.labels,
        "tier": pod.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_TIER)),
        "spec": pod.spec,
    });
    let digest = Sha256::digest(serde_json::to_vec(&input).expect("JSON of a Pod"));
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The workspace's claim: ReadWriteOnce (one node at a time), no
/// ownerReferences, never deleted but by the sweeper's erase.
pub fn workspace_claim(
    workspace_id: Uuid,
    org_id: Uuid,
    size_gb: Option<u16>,
    storage_class: Option<&str>,
) -> PersistentVolumeClaim {
    let size = size_gb.unwrap_or(DEFAULT_SIZE_GB);
    let mut spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": { "requests": { "storage": format!("{size}Gi") } },
    });
    if let Some(class) = storage_class {
        spec["storageClassName"] = json!(class);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": claim_name(workspace_id),
            "labels": {
                LABEL_WORKSPACE: workspace_id.to_string(),
                LABEL_ORG: org_id.to_string(),
                LABEL_KIND: "data",
                LABEL_MANAGED_BY: "holdfast",
            },
            "annotations": { ANNOTATION_SIZE_GB: size.to_string() },
        },
        "spec": spec,
    }))
    .expect("a well-formed claim")
}

/// Makes `claim` one that binds to the kept `pv` (whose claim was deleted
/// outside holdfast): its name, its class (`""` for none: never the
/// default class's provisioner), and no more storage than it has.
pub fn bind_to(
    claim: &mut PersistentVolumeClaim,
    pv: &k8s_openapi::api::core::v1::PersistentVolume,
) {
    let spec = claim.spec.get_or_insert_with(Default::default);
    spec.volume_name = pv.metadata.name.clone();
    let pv_spec = pv.spec.clone().unwrap_or_default();
    spec.storage_class_name = Some(pv_spec.storage_class_name.unwrap_or_default());
    if let Some(size) = pv_spec.capacity.as_ref().and_then(|c| c.get("storage")) {
        let resources = spec.resources.get_or_insert_with(Default::default);
        resources
            .requests
            .get_or_insert_with(Default::default)
            .insert("storage".to_owned(), size.clone());
    }
}

/// A short-lived Pod that mounts the claim read-only, for the size and
/// export of its data (`holdfast census` and `holdfast archive`, run in it
/// over the API's exec). It runs nothing but a sleep, with no token. When a
/// Pod already mounts the claim, the helper is put on that Pod's `node`:
/// a ReadWriteOnce volume is shared by the Pods of one node, and a helper
/// scheduled elsewhere would wait on a Multi-Attach error.
pub fn helper_pod(
    workspace_id: Uuid,
    org_id: Uuid,
    image: &ImageRef,
    n: Uuid,
    node: Option<&str>,
) -> Pod {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": helper_name(workspace_id, n),
            "labels": {
                LABEL_WORKSPACE: workspace_id.to_string(),
                LABEL_ORG: org_id.to_string(),
                LABEL_KIND: "helper",
                LABEL_MANAGED_BY: "holdfast",
            },
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            // It must not outlive a forgotten read by long.
            "activeDeadlineSeconds": 600,
            "terminationGracePeriodSeconds": 0,
            "securityContext": pod_security(),
            "containers": [{
                "name": "helper",
                "image": image.as_str(),
                "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "600"],
                "resources": {
                    "requests": { "memory": "32Mi", "cpu": "50m" },
                    "limits": { "memory": "64Mi" },
                },
                "securityContext": container_security(),
                "volumeMounts": [{ "name": "data", "mountPath": DATA_DIR, "readOnly": true }],
            }],
            "volumes": [{
                "name": "data",
                "persistentVolumeClaim": {
                    "claimName": claim_name(workspace_id),
                    "readOnly": true,
                },
            }],
        },
    });
    if let Some(node) = node {
        pod["spec"]["nodeName"] = json!(node);
    }
    serde_json::from_value(pod).expect("a well-formed Pod")
}

/// A minimal YAML rendering of JSON (block maps and lists, scalars in JSON
/// quoting, which YAML reads as double-quoted strings): the golden files
/// are read by people, `kubernetes-validate` and `podman kube play`.
pub fn to_yaml(value: &serde_json::Value) -> String {
    fn scalar(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::String(s) => serde_json::to_string(s).expect("a JSON string"),
            other => other.to_string(),
        }
    }
    fn write(out: &mut String, v: &serde_json::Value, indent: usize) {
        let pad = " ".repeat(indent);
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match v {
                        serde_json::Value::Object(m) if !m.is_empty() => {
                            out.push_str(&format!("{pad}{k}:\n"));
                            write(out, v, indent + 2);
                        }
                        serde_json::Value::Array(a) if !a.is_empty() => {
                            out.push_str(&format!("{pad}{k}:\n"));
                            write(out, v, indent);
                        }
                        serde_json::Value::Object(_) => out.push_str(&format!("{pad}{k}: {{}}\n")),
                        serde_json::Value::Array(_) => out.push_str(&format!("{pad}{k}: []\n")),
                        _ => out.push_str(&format!("{pad}{k}: {}\n", scalar(v))),
                    }
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    match item {
                        serde_json::Value::Object(m) if !m.is_empty() => {
                            let mut inner = String::new();
                            write(&mut inner, item, indent + 2);
                            // The first key goes on the dash's line.
                            let inner = inner.trim_start();
                            out.push_str(&format!("{pad}- {inner}"));
                        }
                        _ => out.push_str(&format!("{pad}- {}\n", scalar(item))),
                    }
                }
            }
            other => out.push_str(&format!("{pad}{}\n", scalar(other))),
        }
    }
    let mut out = String::new();
    write(&mut out, value, 0);
    out
}
