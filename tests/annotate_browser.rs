//! End to end in a real browser: `alignflow annotate` serves three pairs; headless Chromium,
//! driven by chromedriver over WebDriver (plain HTTP + JSON), answers one pair with clicks and
//! one with the keyboard shortcuts, skips the third; the answers table then holds exactly the
//! two answers, with the responses the person saw on the side they picked.
//! Prints SKIPPED (and passes) when Chromium or chromedriver is missing (scripts/setup.sh
//! installs Debian's `chromium` and `chromium-driver`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use annotate::client::request;
use datasets::annotate::Rating;
use datasets::human::{candidates_batch, read_answers, write_table_atomic, CandidateRow};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const T: Duration = Duration::from_secs(60);

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromedriver() -> Option<String> {
    ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"].iter().find(|p| Path::new(p).exists()).map(|p| p.to_string())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Driver {
    addr: String,
    session: String,
}

impl Drop for Driver {
    /// Ends the session, which quits Chromium (also when the test fails).
    fn drop(&mut self) {
        let _ = request(self.addr.as_str(), "DELETE", &format!("/session/{}", self.session), &[], b"", Duration::from_secs(20));
    }
}

impl Driver {
    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let body = if method == "GET" { Vec::new() } else { body.to_string().into_bytes() };
        let r = request(self.addr.as_str(), method, &path, &[("content-type", "application/json")], &body, T).expect("webdriver request");
        assert_eq!(r.status, 200, "webdriver {method} {path}: {}", r.text());
        r.json()["value"].clone()
    }
    fn script(&self, js: &str) -> Value {
        self.call("POST", "/execute/sync", json!({"script": js, "args": []}))
    }
    fn click(&self, css: &str) {
        let el = self.call("POST", "/element", json!({"using": "css selector", "value": css}));
        let id = el.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).expect("element id").to_string();
        self.call("POST", &format!("/element/{id}/click"), json!({}));
    }
    fn keys(&self, keys: &[&str]) {
        let mut actions = Vec::new();
        for k in keys {
            actions.push(json!({"type": "keyDown", "value": k}));
            actions.push(json!({"type": "keyUp", "value": k}));
        }
        self.call("POST", "/actions", json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]}));
    }
    /// Polls `js` until it returns something other than null/false.
    fn wait_for(&self, js: &str, what: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.script(js);
            if !v.is_null() && v != Value::Bool(false) {
                return v;
            }
            assert!(start.elapsed() < T, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn a_person_answers_by_clicks_and_keys_in_headless_chromium() {
    let Some(driver_bin) = chromedriver().filter(|_| Path::new(CHROMIUM).exists()) else {
        eprintln!("SKIPPED: {CHROMIUM} or chromedriver is missing (scripts/setup.sh installs Debian's chromium and chromium-driver)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pairs: Vec<CandidateRow> = (0..3)
        .map(|i| CandidateRow {
            id: format!("q{i}@r1"),
            prompt_id: format!("q{i}"),
            prompt: format!("What is {i} + {i}?"),
            response_a: format!("It is {}.", 2 * i),
            response_b: format!("<b>I am not sure</b> about {i}."),
            track: "helpfulness".into(),
            split: "train".into(),
            gold_a: 1.0,
            gold_b: 0.0,
        })
        .collect();
    let pairs_file = dir.path().join("pairs.parquet");
    write_table_atomic(&pairs_file, &candidates_batch(&pairs).unwrap()).unwrap();

    let mut server = Command::new(env!("CARGO_BIN_EXE_alignflow"))
        .args(["annotate", "--pairs", pairs_file.to_str().unwrap(), "--port", "0", "--token", "browser-test-token"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("alignflow annotate starts");
    let mut url = String::new();
    let mut out = BufReader::new(server.stdout.take().unwrap());
    out.read_line(&mut url).unwrap();
    // Keep reading what it prints, so its stdout never breaks.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let _server = Kill(server);
    let url = url.trim().to_string();
    assert!(url.starts_with("http://127.0.0.1:") && url.ends_with("?token=browser-test-token"), "{url}");

    eprintln!("browser test: server up at {url}");
    let port = free_port();
    let cd = Command::new(&driver_bin).arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("chromedriver starts");
    let _cd = Kill(cd);
    let addr = format!("127.0.0.1:{port}");
    let start = Instant::now();
    while request(addr.as_str(), "GET", "/status", &[], b"", Duration::from_secs(2)).map(|r| r.json()["value"]["ready"] != true).unwrap_or(true) {
        assert!(start.elapsed() < T, "chromedriver did not get ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("browser test: chromedriver ready");
    let profile = dir.path().join("chromium-profile");
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect::<Vec<_>>();
    let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {"binary": CHROMIUM, "args": args}}}});
    let r = request(addr.as_str(), "POST", "/session", &[("content-type", "application/json")], caps.to_string().as_bytes(), T).unwrap();
    assert_eq!(r.status, 200, "new session: {}", r.text());
    let d = Driver { addr: addr.clone(), session: r.json()["value"]["sessionId"].as_str().unwrap().to_string() };

    eprintln!("browser test: session started");
    d.call("POST", "/url", json!({"url": url}));
    let current = "return document.getElementById('work').dataset.pair || null";
    let sides = "return [document.querySelector('#left .text').textContent, document.querySelector('#right .text').textContent]";

    eprintln!("browser test: page loading");
    // Pair 1, by clicks: left is better, "better", both safe.
    let first = d.wait_for(current, "the first pair").as_str().unwrap().to_string();
    let seen1 = d.script(sides);
    d.click("#pick-left");
    d.click("#r-better");
    d.click("#s-none");
    d.click("#submit");

    eprintln!("browser test: pair 1 answered");
    // Pair 2, by keys: right is better (2), significantly (a), left unsafe (x), Enter.
    let second = d.wait_for(&format!("const p = document.getElementById('work').dataset.pair; return p && p !== '{first}' ? p : null"), "the second pair");
    let second = second.as_str().unwrap().to_string();
    let seen2 = d.script(sides);
    assert!(seen2[0].as_str().unwrap().contains("It is") || seen2[1].as_str().unwrap().contains("It is"));
    d.keys(&["2", "a", "x", "\u{E007}"]);

    eprintln!("browser test: pair 2 answered");
    // Pair 3: skip (k); nothing is left but the skipped pair.
    d.wait_for(&format!("const p = document.getElementById('work').dataset.pair; return p && p !== '{second}' ? p : null"), "the third pair");
    d.keys(&["k"]);
    d.wait_for("return getComputedStyle(document.getElementById('done')).display !== 'none'", "the done message");
    let progress = d.script("const e = document.getElementById('progress'); return [e.dataset.done, e.dataset.remaining, document.getElementById('done-text').textContent]");
    assert_eq!(progress, json!(["2", "1", "Nothing left except 1 skipped pair(s)."]));
    // Markup in a response is shown as text, not interpreted.
    let b_tags = d.script("return document.querySelectorAll('#left .text b, #right .text b').length");
    assert_eq!(b_tags, json!(0));
    drop(d);

    let rows = read_answers(&dir.path().join("answers.parquet")).unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let r1 = rows.iter().find(|r| r.pair_id == first).expect("pair 1 answered");
    assert_eq!((r1.chosen.as_str(), r1.rejected.as_str()), (seen1[0].as_str().unwrap(), seen1[1].as_str().unwrap()));
    assert_eq!(r1.rating, Rating::Better);
    assert_eq!(r1.safety_bin().as_str(), "both_safe");
    let r2 = rows.iter().find(|r| r.pair_id == second).expect("pair 2 answered");
    assert_eq!((r2.chosen.as_str(), r2.rejected.as_str()), (seen2[1].as_str().unwrap(), seen2[0].as_str().unwrap()));
    assert_eq!(r2.rating, Rating::SignificantlyBetter);
    assert_eq!(r2.safety_bin().as_str(), "chosen_safe_other_unsafe");
    assert!(rows.iter().all(|r| r.annotator_name == "anonymous"));
}
