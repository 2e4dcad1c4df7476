//! A small in-memory Kubernetes API server for the backend's tests, played
//! through kube-rs's `tower-test` mock: it keeps the objects it is sent
//! (uids, resourceVersions), answers create, get, list (label selectors),
//! merge patch and delete (uid preconditions) as the real one does, binds a
//! new claim to a PV of a `Delete` StorageClass (the default that loses
//! data), reclaims or releases the PV when its claim goes, logs every
//! request, and answers injected faults.

use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// An injected answer: the next `times` requests of `method` whose path
/// contains `path` get `status` instead.
#[derive(Debug, Clone)]
pub struct Fault {
    pub method: &'static str,
    pub path: String,
    pub status: u16,
    pub reason: &'static str,
    pub message: String,
    pub times: usize,
}

impl Fault {
    pub fn new(method: &'static str, path: &str, status: u16, reason: &'static str) -> Fault {
        Fault {
            method,
            path: path.to_owned(),
            status,
            reason,
            message: format!("injected {status} {reason}"),
            times: 1,
        }
    }

    pub fn times(mut self, n: usize) -> Fault {
        self.times = n;
        self
    }

    pub fn message(mut self, m: &str) -> Fault {
        self.message = m.to_owned();
        self
    }
}

#[derive(Debug, Default)]
pub struct State {
    /// Objects by their item path (`/api/v1/namespaces/ns/pods/NAME`).
    pub objects: BTreeMap<String, Value>,
    /// `METHOD path` of every request, in order.
    pub log: Vec<String>,
    pub faults: Vec<Fault>,
    /// What a SelfSubjectAccessReview for patching PVs answers.
    pub may_patch_pvs: bool,
    /// Whether a new claim binds at once (else it stays Pending).
    pub bind_at_once: bool,
    /// Fail every request after this many (a crash of the API server).
    pub fail_after: Option<usize>,
    /// The text every Pod's log holds.
    pub pod_log: String,
    /// What a follow of a Pod's log also gets, after `pod_log`.
    pub pod_log_later: String,
    /// Whether the next watch of Pods answers 410 Gone.
    pub expire_next_watch: bool,
    /// The data dir behind each claim (by its name), or each emptyDir (by
    /// its Pod's name), for the exec's programs.
    pub data_dirs: BTreeMap<String, std::path::PathBuf>,
    /// The path of every object created, in order.
    pub created: Vec<String>,
    /// Requests get no answer at all (a hung API server).
    pub hang: bool,
    /// New Pods stay Pending, unschedulable for this `(reason, message)`.
    pub unschedulable: Option<(String, String)>,
    next: u64,
}

/// One answer of the fake.
struct Answer {
    status: u16,
    content_type: Option<&'static str>,
    body: Vec<u8>,
}

#[derive(Clone)]
pub struct Fake {
    pub state: Arc<Mutex<State>>,
}

const COLLECTIONS: &[&str] = &[
    "events",
    "pods",
    "persistentvolumeclaims",
    "persistentvolumes",
    "selfsubjectaccessreviews",
];

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code,
        }),
    )
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn matches_selector(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        let got = &obj["metadata"]["labels"][k];
        if v.is_empty() {
            !got.is_null()
        } else {
            got.as_str() == Some(v)
        }
    })
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            v.replace("%3D", "=")
                .replace("%2C", ",")
                .replace("%2F", "/")
                .replace("+", " ")
        })
    })
}

impl Fake {
    /// A new fake cluster, and a client of it.
    pub fn start() -> (kube::Client, Fake) {
        let fake = Fake {
            state: Arc::new(Mutex::new(State {
                may_patch_pvs: true,
                bind_at_once: true,
                ..State::default()
            })),
        };
        (fake.client(), fake)
    }

    /// Another client of the same cluster (a restarted or second replica).
    pub fn client(&self) -> kube::Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let body = body.collect_bytes().await.unwrap_or_default();
                let server = server.clone();
                tokio::spawn(async move {
                    let answer = server.respond(&parts.method, &parts.uri, &body).await;
                    let Some(answer) = answer else {
                        return;
                    };
                    let mut response = Response::builder().status(answer.status);
                    if let Some(ct) = answer.content_type {
                        response = response.header("content-type", ct);
                    }
                    send.send_response(response.body(Body::from(answer.body)).expect("a response"));
                });
            }
        });
        kube::Client::new(service, "default")
    }

    /// Serves the fake over plain HTTP on 127.0.0.1 (for a `holdfast serve`
    /// whose kubeconfig points at it, or a client of [`Self::http_client`]);
    /// returns its URL. Over HTTP the exec is the real one: a websocket
    /// upgrade speaking `v4.channel.k8s.io`, whose program runs in this
    /// process on the data dir the Pod mounts ([`State::data_dirs`]).
    pub async fn serve_http(&self) -> std::io::Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let fake = self.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let fake = fake.clone();
            async move {
                if request.uri().path().ends_with("/exec") {
                    return fake.exec_upgrade(request);
                }
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, 64 << 20)
                    .await
                    .unwrap_or_default();
                match fake.respond(&parts.method, &parts.uri, &body).await {
                    Some(a) => {
                        let mut r = axum::http::Response::builder().status(a.status);
                        if let Some(ct) = a.content_type {
                            r = r.header("content-type", ct);
                        }
                        r.body(axum::body::Body::from(a.body)).expect("a response")
                    }
                    None => axum::http::Response::builder()
                        .status(504)
                        .body(axum::body::Body::empty())
                        .expect("a response"),
                }
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(url)
    }

    /// A client of the fake served over HTTP at `url`.
    pub fn http_client(url: &str) -> kube::Client {
        let config = kube::Config::new(url.parse().expect("a URL"));
        kube::Client::try_from(config).expect("a client")
    }

    /// The websocket side of an exec: answers 101, then sends the
    /// program's stdout (channel 1), stderr (2) and exit status (3).
    fn exec_upgrade(&self, mut request: axum::extract::Request) -> axum::response::Response {
        use tokio_tungstenite::tungstenite::{
            Message, handshake::derive_accept_key, protocol::Role,
        };
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or("").to_owned();
        let headers = request.headers();
        let key = headers
            .get("sec-websocket-key")
            .map(|k| derive_accept_key(k.as_bytes()));
        let offered = headers
            .get("sec-websocket-protocol")
            .and_then(|p| p.to_str().ok())
            .unwrap_or("")
            .to_owned();
        self.with(|s| s.log.push(format!("EXEC {path}")));
        let (Some(accept), true) = (key, offered.contains("v4.channel.k8s.io")) else {
            return axum::http::Response::builder()
                .status(400)
                .body(axum::body::Body::from("not a websocket exec"))
                .expect("a response");
        };
        let pod_path = path.trim_end_matches("/exec").to_owned();
        let argv: Vec<String> = query
            .split('&')
            .filter_map(|kv| kv.strip_prefix("command="))
            .map(percent_decode)
            .collect();
        let (out, err, code) = self.run_in(&pod_path, &argv);
        let on_upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let io = hyper_util::rt::TokioIo::new(upgraded);
            let mut ws =
                tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None).await;
            use futures_util::SinkExt;
            let framed = |channel: u8, data: &[u8]| {
                let mut v = vec![channel];
                v.extend_from_slice(data);
                Message::binary(v)
            };
            for chunk in out.chunks(16 * 1024) {
                if ws.send(framed(1, chunk)).await.is_err() {
                    return;
                }
            }
            if !err.is_empty() {
                let _ = ws.send(framed(2, err.as_bytes())).await;
            }
            let status = serde_json::to_vec(&exec_status(code)).expect("JSON");
            let _ = ws.send(framed(3, &status)).await;
            let _ = ws.close(None).await;
        });
        axum::http::Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-accept", accept)
            .header("sec-websocket-protocol", "v4.channel.k8s.io")
            .body(axum::body::Body::empty())
            .expect("a response")
    }

    /// Runs `holdfast census|archive DIR` as the Pod at `pod_path` would,
    /// on the data dir of the claim (or emptyDir) it mounts: `(stdout,
    /// stderr, exit code)`.
    pub fn run_in(&self, pod_path: &str, argv: &[String]) -> (Vec<u8>, String, i32) {
        let Some(obj) = self.object(pod_path) else {
            return (Vec::new(), "no such Pod".to_owned(), 1);
        };
        let pod = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let key = obj["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
            .as_str()
            .unwrap_or(&pod)
            .to_owned();
        let dir = self.with(|s| s.data_dirs.get(&key).cloned());
        match (argv.get(1).map(String::as_str), dir) {
            (_, None) => (Vec::new(), format!("{key}: no data dir in the fake"), 1),
            (Some("census"), Some(dir)) => match crate::tree::census(&dir) {
                Ok(c) => (format!("{}\n", c.to_line()).into_bytes(), String::new(), 0),
                Err(e) => (Vec::new(), e.to_string(), 1),
            },
            (Some("archive"), Some(dir)) => match crate::export::check(&dir) {
                Err(e) => (Vec::new(), e.to_string(), 3),
                Ok(plan) => {
                    let mut out = Vec::new();
                    match crate::export::write_archive(&dir, plan, &mut out) {
                        Ok(()) => (out, String::new(), 0),
                        Err(e) => (out, e.to_string(), 1),
                    }
                }
            },
            _ => (Vec::new(), "sh: not found".to_owned(), 127),
        }
    }

    /// A kubeconfig file for `url` (no credentials: the fake takes all).
    pub fn kubeconfig(url: &str, path: &std::path::Path) -> std::io::Result<()> {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
                 users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
                 current-context: fake\n"
            ),
        )
    }

    /// The fake's answer to one request, whatever carries it; `None`: it
    /// never answers (a hung API server).
    async fn respond(&self, method: &http::Method, uri: &http::Uri, body: &[u8]) -> Option<Answer> {
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let query = uri.query().unwrap_or("").to_owned();
        let path = uri.path().to_owned();
        if path.ends_with("/log") {
            // A container log: text, the whole of it; a follow also gets
            // what was written after (then ends).
            let pod = path.trim_end_matches("/log").to_owned();
            let (code, text) = self.with(|s| {
                s.log.push(format!("GET {path}"));
                match s.objects.get(&pod) {
                    Some(p) if p["status"]["phase"] == "Pending" => (
                        400,
                        serde_json::to_string(
                            &status(
                                400,
                                "BadRequest",
                                "container \"workspace\" in pod is waiting to start: ContainerCreating",
                            )
                            .1,
                        )
                        .expect("JSON"),
                    ),
                    Some(_) if query.contains("follow=true") => {
                        (200, format!("{}{}", s.pod_log, s.pod_log_later))
                    }
                    Some(_) => (200, s.pod_log.clone()),
                    None => (
                        404,
                        serde_json::to_string(&status(404, "NotFound", "pod not found").1)
                            .expect("JSON"),
                    ),
                }
            });
            return Some(Answer {
                status: code,
                content_type: None,
                body: text.into_bytes(),
            });
        }
        if query.contains("watch=true") || query.contains("watch=1") {
            // A watch: a 410 Gone once when asked to, else nothing for a
            // while (the watcher then watches again).
            let expire = self.with(|s| {
                s.log.push(format!("WATCH {path}"));
                path.ends_with("/pods") && std::mem::take(&mut s.expire_next_watch)
            });
            let body = if expire {
                let (_, st) = status(410, "Expired", "too old resource version");
                format!("{}\n", json!({ "type": "ERROR", "object": st }))
            } else {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                String::new()
            };
            return Some(Answer {
                status: 200,
                content_type: None,
                body: body.into_bytes(),
            });
        }
        let hang = self.with(|s| {
            if s.hang {
                s.log.push(format!("HUNG {method} {path}"));
            }
            s.hang
        });
        if hang {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            return None;
        }
        let (code, answer) = self.answer(method.as_str(), &path, &query, body);
        Some(Answer {
            status: StatusCode::from_u16(code).expect("a status code").as_u16(),
            content_type: Some("application/json"),
            body: serde_json::to_vec(&answer).expect("JSON"),
        })
    }

    /// The data dir of the claim (or emptyDir Pod) `name`.
    pub fn data(&self, name: &str, dir: &std::path::Path) {
        self.with(|s| s.data_dirs.insert(name.to_owned(), dir.to_owned()));
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().expect("the fake's state"))
    }

    pub fn fault(&self, fault: Fault) {
        self.with(|s| s.faults.push(fault));
    }

    /// The request log, and a fresh one from here on.
    pub fn take_log(&self) -> Vec<String> {
        self.with(|s| std::mem::take(&mut s.log))
    }

    pub fn object(&self, path: &str) -> Option<Value> {
        self.with(|s| s.objects.get(path).cloned())
    }

    pub fn put(&self, path: &str, obj: Value) {
        self.with(|s| s.objects.insert(path.to_owned(), obj));
    }

    pub fn paths(&self) -> Vec<String> {
        self.with(|s| s.objects.keys().cloned().collect())
    }

    fn answer(&self, method: &str, path: &str, query: &str, body: Value) -> (u16, Value) {
        let mut s = self.state.lock().expect("the fake's state");
        s.log.push(format!("{method} {path}"));
        if let Some(n) = s.fail_after {
            if n == 0 {
                return status(503, "ServiceUnavailable", "the API server is down");
            }
            s.fail_after = Some(n - 1);
        }
        if let Some(i) = s
            .faults
            .iter()
            .position(|f| f.method == method && path.contains(&f.path) && f.times > 0)
        {
            s.faults[i].times -= 1;
            let f = s.faults[i].clone();
            return status(f.status, f.reason, &f.message);
        }
        let last = path.rsplit('/').next().unwrap_or_default();
        let is_collection = COLLECTIONS.contains(&last);
        s.next += 1;
        let n = s.next;
        match (method, is_collection) {
            ("POST", true) if last == "selfsubjectaccessreviews" => {
                let mut review = body;
                review["status"] = json!({ "allowed": s.may_patch_pvs });
                (201, review)
            }
            ("POST", true) => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let key = format!("{path}/{name}");
                if s.objects.contains_key(&key) {
                    return status(
                        409,
                        "AlreadyExists",
                        &format!("{last} \"{name}\" already exists"),
                    );
                }
                let mut obj = body;
                obj["metadata"]["uid"] = json!(format!("uid-{n}"));
                obj["metadata"]["resourceVersion"] = json!(n.to_string());
                match last {
                    "pods" => match &s.unschedulable {
                        None => obj["status"] = json!({ "phase": "Running" }),
                        Some((reason, message)) => {
                            obj["status"] = json!({ "phase": "Pending", "conditions": [{
                                "type": "PodScheduled", "status": "False",
                                "reason": reason, "message": message,
                            }]});
                        }
                    },
                    // A claim that names its PV binds to it (once the PV's
                    // claimRef points back, which the test checks).
                    "persistentvolumeclaims"
                        if obj["spec"]["volumeName"].as_str().is_some_and(|pv| {
                            s.objects
                                .contains_key(&format!("/api/v1/persistentvolumes/{pv}"))
                        }) =>
                    {
                        let pv = obj["spec"]["volumeName"].as_str().unwrap_or_default();
                        let pv_path = format!("/api/v1/persistentvolumes/{pv}");
                        obj["status"] = json!({ "phase": "Bound" });
                        if let Some(pv) = s.objects.get_mut(&pv_path) {
                            pv["status"]["phase"] = json!("Bound");
                        }
                    }
                    "persistentvolumeclaims" if s.bind_at_once => {
                        let pv = format!("pvc-{n}");
                        obj["spec"]["volumeName"] = json!(pv);
                        obj["status"] = json!({ "phase": "Bound" });
                        s.objects.insert(
                            format!("/api/v1/persistentvolumes/{pv}"),
                            json!({
                                "apiVersion": "v1", "kind": "PersistentVolume",
                                "metadata": { "name": pv, "uid": format!("uid-pv-{n}"),
                                              "resourceVersion": n.to_string() },
                                "spec": { "persistentVolumeReclaimPolicy": "Delete",
                                          "capacity": { "storage": "10Gi" },
                                          "accessModes": ["ReadWriteOnce"],
                                          "claimRef": { "name": name, "uid": format!("uid-{n}") } },
                                "status": { "phase": "Bound" },
                            }),
                        );
                    }
                    "persistentvolumeclaims" => obj["status"] = json!({ "phase": "Pending" }),
                    _ => {}
                }
                s.created.push(key.clone());
                s.objects.insert(key, obj.clone());
                (201, obj)
            }
            ("GET", true) => {
                let selector = query_param(query, "labelSelector").unwrap_or_default();
                let items: Vec<Value> = s
                    .objects
                    .iter()
                    .filter(|(k, _)| k.rsplit_once('/').map(|(c, _)| c) == Some(path))
                    .map(|(_, v)| v.clone())
                    .filter(|v| matches_selector(v, &selector))
                    .collect();
                (
                    200,
                    json!({ "kind": "List", "apiVersion": "v1",
                              "metadata": { "resourceVersion": n.to_string() }, "items": items }),
                )
            }
            ("GET", false) => match s.objects.get(path) {
                Some(obj) => (200, obj.clone()),
                None => status(404, "NotFound", &format!("\"{last}\" not found")),
            },
            ("PATCH", false) => {
                let Some(obj) = s.objects.get_mut(path) else {
                    return status(404, "NotFound", &format!("\"{last}\" not found"));
                };
                if let Some(uid) = body["metadata"]["uid"].as_str()
                    && obj["metadata"]["uid"].as_str() != Some(uid)
                {
                    return status(409, "Conflict", "Precondition failed: UID in precondition");
                }
                merge(obj, &body);
                obj["metadata"]["resourceVersion"] = json!(n.to_string());
                let obj = obj.clone();
                // The PV controller reclaims a Released PV set to Delete.
                if obj["status"]["phase"] == "Released"
                    && obj["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
                {
                    s.objects.remove(path);
                }
                (200, obj)
            }
            ("DELETE", false) => {
                let Some(obj) = s.objects.get(path).cloned() else {
                    return status(404, "NotFound", &format!("\"{last}\" not found"));
                };
                if let Some(uid) = body["preconditions"]["uid"].as_str()
                    && obj["metadata"]["uid"].as_str() != Some(uid)
                {
                    return status(409, "Conflict", "Precondition failed: UID in precondition");
                }
                s.objects.remove(path);
                // A claim's PV is reclaimed by its policy: Delete removes
                // the disk, Retain keeps it Released.
                if path.contains("/persistentvolumeclaims/")
                    && let Some(pv) = obj["spec"]["volumeName"].as_str()
                {
                    let pv_path = format!("/api/v1/persistentvolumes/{pv}");
                    if let Some(pv_obj) = s.objects.get_mut(&pv_path) {
                        if pv_obj["spec"]["persistentVolumeReclaimPolicy"] == "Delete" {
                            s.objects.remove(&pv_path);
                        } else {
                            pv_obj["status"]["phase"] = json!("Released");
                        }
                    }
                }
                (200, obj)
            }
            _ => status(405, "MethodNotAllowed", "not played by the fake"),
        }
    }
}

/// The fake cluster's exec, in memory (`tower-test` cannot play the
/// websocket upgrade the real one is): each claim's data (and each
/// ephemeral Pod's) is a directory of the test, and `holdfast census` and
/// `holdfast archive` run in this process on the directory the Pod
/// mounts, answering as the API server's status channel does.
pub struct FakeExec {
    pub fake: Fake,
    /// `container argv…` of every exec.
    pub calls: Mutex<Vec<String>>,
    /// The Pod each exec ran in, as it was then.
    pub pods: Mutex<Vec<Value>>,
}

impl FakeExec {
    pub fn new(fake: &Fake) -> Arc<FakeExec> {
        Arc::new(FakeExec {
            fake: fake.clone(),
            calls: Mutex::new(Vec::new()),
            pods: Mutex::new(Vec::new()),
        })
    }

    pub fn data(&self, name: &str, dir: &std::path::Path) {
        self.fake.data(name, dir);
    }
}

fn api_error(code: u16, reason: &str, message: &str) -> kube::Error {
    let (_, st) = status(code, reason, message);
    kube::Error::Api(Box::new(serde_json::from_value(st).expect("a Status")))
}

fn exec_status(code: i32) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status> {
    let st = if code == 0 {
        json!({ "metadata": {}, "status": "Success" })
    } else {
        json!({ "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                "message": format!("command terminated with non-zero exit code: {code}"),
                "details": { "causes": [{ "reason": "ExitCode", "message": code.to_string() }] } })
    };
    serde_json::from_value(st).ok()
}

#[async_trait::async_trait]
impl super::exec::Exec for FakeExec {
    async fn exec(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        argv: Vec<String>,
    ) -> kube::Result<super::exec::ExecOutput> {
        self.calls
            .lock()
            .expect("calls")
            .push(format!("{container} {}", argv.join(" ")));
        let path = format!("/api/v1/namespaces/{namespace}/pods/{pod}");
        let Some(obj) = self.fake.object(&path) else {
            return Err(api_error(
                404,
                "NotFound",
                &format!("pods \"{pod}\" not found"),
            ));
        };
        self.pods.lock().expect("pods").push(obj.clone());
        if obj["status"]["phase"] != "Running" {
            return Err(api_error(400, "BadRequest", "container is not running"));
        }
        let (out, err, code) = self.fake.run_in(&path, &argv);
        Ok(super::exec::ExecOutput {
            stdout: Box::pin(std::io::Cursor::new(out)),
            stderr: Box::pin(std::io::Cursor::new(err.into_bytes())),
            status: Box::pin(async move { exec_status(code) }),
            keep: Box::new(()),
        })
    }
}

/// `%2Fopt%2F…` → `/opt/…` (a query value as kube-rs encodes it).
fn percent_decode(s: &str) -> String {
    let bytes = s.replace('+', " ").into_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&String::from_utf8_lossy(&bytes[i + 1..i + 3]), 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
