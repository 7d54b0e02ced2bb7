//! alignflow's annotation UI (docs/annotation.md): a small local web server that shows people
//! preference pairs (the prompt, two responses side by side in random order) and records their
//! choice, four-level rating and safety label in a Parquet answers table that the
//! `collect_preferences` stage reads (`annotator = "human"`).
//!
//! HTTP surface (every request needs the token: header `x-annotate-token: T`, or `?token=T`):
//! - `GET /` the page (plain HTML + JS, embedded; keyboard shortcuts listed on it);
//! - `GET /api/next?client=C&skip=ID,ID` the next pair for client C, with progress;
//! - `POST /api/answer` `{"pair_id", "choice": "a"|"b", "rating", "unsafe": "none"|"a"|"b"|"both",
//!   "annotator"}` records one answer (200), or refuses it with 400 (malformed or invalid),
//!   401 (token), 404 (unknown pair), 409 (already answered), 413 (body over 16 KiB);
//!   a refused request changes nothing;
//! - `GET /api/progress` `{"done", "remaining", "total"}`.

pub mod client;
mod page;
pub mod store;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use datasets::annotate::Rating;
use datasets::human::{parse_choice, CandidateRow};
use serde::Deserialize;

pub use store::{NewAnswer, Progress, Store, SubmitError};

/// Largest request body accepted (answers are a few hundred bytes).
pub const MAX_BODY: usize = 16 * 1024;
/// Longest annotator name, client id or pair id accepted in a request.
pub const MAX_NAME: usize = 64;
const MAX_ID: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum AnnotateError {
    #[error("{}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Data(#[from] datasets::DataError),
    #[error("{}: another `alignflow annotate` holds this answers table (lock file {})", .0.display(), store::lock_path(.0).display())]
    Locked(PathBuf),
    #[error("{0}: no pairs to annotate")]
    NoPairs(String),
    #[error("could not listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the server failed: {0}")]
    Server(String),
}

/// What to serve.
pub struct Config {
    pub pairs: Vec<CandidateRow>,
    pub answers: PathBuf,
    /// `host:port`; port 0 picks a free one. Loopback unless the user says otherwise.
    pub listen: String,
    pub token: String,
}

/// A running server; dropping it (or `stop`) shuts it down.
pub struct Server {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), AnnotateError>>>,
}

impl Server {
    /// Blocks until the server stops (it stops only on an error or `stop` from elsewhere).
    pub fn wait(mut self) -> Result<(), AnnotateError> {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(AnnotateError::Server("the server thread panicked".into())),
            None => Ok(()),
        }
    }

    pub fn stop(mut self) -> Result<(), AnnotateError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A fresh random token (32 hex digits from the OS's random source).
pub fn random_token() -> String {
    let mut buf = [0u8; 16];
    let seeded = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf));
    if seeded.is_err() {
        // No /dev/urandom: hash what differs between runs.
        let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        let h = blake3::hash(format!("{t}/{}", std::process::id()).as_bytes());
        buf.copy_from_slice(&h.as_bytes()[..16]);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

struct App {
    store: Mutex<Store>,
    token: String,
    title: String,
}

/// Opens the answers table, binds `cfg.listen` and serves on a background thread.
pub fn start(cfg: Config) -> Result<Server, AnnotateError> {
    if cfg.pairs.is_empty() {
        return Err(AnnotateError::NoPairs(cfg.answers.display().to_string()));
    }
    if cfg.token.is_empty() {
        return Err(AnnotateError::Server("the token must not be empty".into()));
    }
    let title = cfg.answers.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let store = Store::open(&cfg.answers, cfg.pairs)?;
    let listener = TcpListener::bind(&cfg.listen).map_err(|source| AnnotateError::Bind { addr: cfg.listen.clone(), source })?;
    let addr = listener.local_addr().map_err(|source| AnnotateError::Bind { addr: cfg.listen.clone(), source })?;
    listener.set_nonblocking(true).map_err(|source| AnnotateError::Bind { addr: cfg.listen.clone(), source })?;
    let app = Arc::new(App { store: Mutex::new(store), token: cfg.token, title });
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("annotate-server".into())
        .spawn(move || -> Result<(), AnnotateError> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| AnnotateError::Server(format!("tokio runtime: {e}")))?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| AnnotateError::Server(e.to_string()))?;
                axum::serve(listener, router(app))
                    .with_graceful_shutdown(async move {
                        let _ = rx.await;
                    })
                    .await
                    .map_err(|e| AnnotateError::Server(e.to_string()))
            })
        })
        .map_err(|e| AnnotateError::Server(format!("spawn: {e}")))?;
    Ok(Server { addr, shutdown: Some(tx), thread: Some(thread) })
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/next", get(next))
        .route("/api/progress", get(progress))
        .route("/api/answer", post(answer))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(app.clone(), auth))
        .with_state(app)
}

/// A JSON response (axum's `json` feature is left out to keep the build small).
fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    json(status, &serde_json::json!({ "error": msg.into() }))
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let header = req.headers().get("x-annotate-token").map(|v| v.as_bytes().to_vec());
    let query = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")).map(|t| t.as_bytes().to_vec()));
    match header.or(query) {
        Some(t) if same(&t, app.token.as_bytes()) => {
            let mut resp = next.run(req).await;
            resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Some(_) => error(StatusCode::UNAUTHORIZED, "wrong token"),
        None => error(StatusCode::UNAUTHORIZED, "missing token: open the URL `alignflow annotate` printed (it carries ?token=...)"),
    }
}

async fn page(State(app): State<Arc<App>>) -> Response {
    let html = page::PAGE.replace("{{TITLE}}", &html_escape(&app.title));
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NextQuery {
    client: String,
    #[serde(default)]
    skip: String,
    #[serde(default)]
    #[allow(dead_code)]
    token: Option<String>,
}

fn lock(app: &App) -> std::sync::MutexGuard<'_, Store> {
    // A panic while holding the lock cannot leave the table half-written (writes are atomic),
    // so the poisoned state is still consistent.
    app.store.lock().unwrap_or_else(|p| p.into_inner())
}

async fn next(State(app): State<Arc<App>>, q: Result<Query<NextQuery>, axum::extract::rejection::QueryRejection>) -> Response {
    let Ok(Query(q)) = q else { return error(StatusCode::BAD_REQUEST, "expected ?client=ID[&skip=ID,ID...]") };
    if !valid_name(&q.client) {
        return error(StatusCode::BAD_REQUEST, format!("client must be 1-{MAX_NAME} characters of A-Z a-z 0-9 - _ ."));
    }
    let skip: HashSet<String> = q.skip.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect();
    let (pair, progress) = {
        let mut store = lock(&app);
        (store.next(&q.client, &skip), store.progress())
    };
    let pair = pair.map(|p| {
        // Random side per hand-out: blake3 of the pair, the client and the clock.
        let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        let flip = blake3::hash(format!("{}/{}/{t}", p.id, q.client).as_bytes()).as_bytes()[0] & 1 == 1;
        let (a, b) = (serde_json::json!({"key": "a", "text": p.response_a}), serde_json::json!({"key": "b", "text": p.response_b}));
        let (left, right) = if flip { (b, a) } else { (a, b) };
        let dialogue: Option<serde_json::Value> =
            serde_json::from_str::<serde_json::Value>(&p.prompt).ok().filter(|v| v.is_array());
        serde_json::json!({"id": p.id, "prompt": p.prompt, "dialogue": dialogue, "left": left, "right": right})
    });
    json(StatusCode::OK, &serde_json::json!({"pair": pair, "done": progress.done, "remaining": progress.remaining, "total": progress.total}))
}

async fn progress(State(app): State<Arc<App>>) -> Response {
    let p = lock(&app).progress();
    json(StatusCode::OK, &p)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerBody {
    pair_id: String,
    choice: String,
    rating: String,
    #[serde(rename = "unsafe")]
    unsafe_: String,
    annotator: String,
}

/// The body, validated, or the 400 message.
fn parse_answer(body: &[u8]) -> Result<NewAnswer, String> {
    let b: AnswerBody = serde_json::from_slice(body).map_err(|e| format!("malformed answer JSON: {e}"))?;
    if b.pair_id.is_empty() || b.pair_id.len() > MAX_ID {
        return Err("pair_id must be 1-512 bytes".into());
    }
    let choice = parse_choice(&b.choice).ok_or_else(|| format!("choice must be \"a\" or \"b\", not {:?}", b.choice))?;
    let rating = Rating::parse(&b.rating).ok_or_else(|| {
        format!("rating must be one of significantly_better, better, slightly_better, negligibly_better, not {:?}", b.rating)
    })?;
    let (unsafe_a, unsafe_b) = match b.unsafe_.as_str() {
        "none" => (false, false),
        "a" => (true, false),
        "b" => (false, true),
        "both" => (true, true),
        other => return Err(format!("unsafe must be \"none\", \"a\", \"b\" or \"both\", not {other:?}")),
    };
    if !valid_name(&b.annotator) {
        return Err(format!("annotator must be 1-{MAX_NAME} characters of A-Z a-z 0-9 - _ ."));
    }
    Ok(NewAnswer { pair_id: b.pair_id, choice, rating, unsafe_a, unsafe_b, annotator_name: b.annotator })
}

async fn answer(State(app): State<Arc<App>>, body: Result<Bytes, axum::extract::rejection::BytesRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return error(e.status(), format!("body refused: {e}")),
    };
    let a = match parse_answer(&body) {
        Ok(a) => a,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
    // The table is written inside the lock: answers are serialised, each publication holds
    // every answer accepted before it.
    let result = tokio::task::block_in_place(|| lock(&app).submit(a, now_ms));
    match result {
        Ok(p) => json(StatusCode::OK, &p),
        Err(e @ SubmitError::UnknownPair(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ SubmitError::AlreadyAnswered(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e @ SubmitError::Write(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Reads the pairs to serve from a Parquet file (see `datasets::human::read_candidates`).
pub fn load_pairs(path: &Path) -> Result<Vec<CandidateRow>, AnnotateError> {
    Ok(datasets::human::read_candidates(path)?)
}
