//! A minimal W3C WebDriver client over chromedriver's REST API (blocking, ureq): enough to open
//! the display in headless Chromium, read element text and attributes, and take screenshots.
//! The session is quit and chromedriver killed when the `Browser` is dropped, pass or fail.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// W3C's key for an element reference in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

fn chromedriver_path() -> Option<PathBuf> {
    ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Chromium and chromedriver, or a failure that says how to get them: a missing browser must
/// fail the test, never skip it silently.
pub fn require_browser() -> PathBuf {
    let driver = chromedriver_path();
    match (Path::new(CHROMIUM).is_file(), driver) {
        (true, Some(driver)) => driver,
        _ => panic!(
            "the display browser test needs Debian's chromium and chromium-driver \
             ({CHROMIUM}, /usr/bin/chromedriver): run scripts/install-deps.sh \
             (CI installs them)"
        ),
    }
}

pub struct Browser {
    driver: Child,
    base: String,
    session: Option<String>,
    agent: ureq::Agent,
    // Chromium's profile; removed when the browser is dropped.
    profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free localhost port and opens a headless session of
    /// `width` x `height` pixels.
    pub fn start(width: u32, height: u32) -> Self {
        let driver_path = require_browser();
        let profile = tempfile::tempdir().expect("profile directory");
        // A free port: bind, read it, release it for chromedriver.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                profile.path().join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver_path.display()));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut browser = Self {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: None,
            agent,
            profile,
        };
        browser.wait_ready();
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            format!(
                "--user-data-dir={}",
                browser.profile.path().join("chromium").display()
            ),
            format!("--window-size={width},{height}"),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}
        }}});
        let created = browser.call("POST", "/session", Some(caps));
        let id = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {created}"))
            .to_string();
        browser.session = Some(id);
        browser.set_viewport(width, height);
        browser
    }

    /// Sizes the window so the page itself gets `width` x `height` CSS pixels (the window size
    /// includes browser chrome, even headless).
    fn set_viewport(&self, width: u32, height: u32) {
        let inner = self.call(
            "POST",
            &self.session_path("/execute/sync"),
            Some(json!({"script": "return [window.innerWidth, window.innerHeight];", "args": []})),
        );
        let rect = self.call("GET", &self.session_path("/window/rect"), None);
        let dim = |v: &Value| v.as_f64().unwrap_or(0.0);
        let (extra_w, extra_h) = (
            dim(&rect["width"]) - dim(&inner[0]),
            dim(&rect["height"]) - dim(&inner[1]),
        );
        self.call(
            "POST",
            &self.session_path("/window/rect"),
            Some(
                json!({"width": f64::from(width) + extra_w, "height": f64::from(height) + extra_h}),
            ),
        );
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self
                .agent
                .get(format!("{}/status", self.base))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                return;
            }
            if let Ok(Some(status)) = self.driver.try_wait() {
                panic!("chromedriver exited with {status}: {}", self.driver_log());
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready in 30 s: {}",
                self.driver_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn driver_log(&self) -> String {
        let log = std::fs::read_to_string(self.profile.path().join("chromedriver.log"))
            .unwrap_or_default();
        let tail: Vec<_> = log.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// One WebDriver command; returns its `value`, panicking with the driver's error otherwise.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let reply = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self
                .agent
                .post(&url)
                .send_json(body.unwrap_or_else(|| json!({}))),
        };
        let mut reply = reply.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = reply.status().as_u16();
        let v: Value = reply
            .body_mut()
            .read_json()
            .unwrap_or_else(|e| panic!("{method} {path}: bad reply: {e}"));
        assert!(
            status == 200,
            "{method} {path}: HTTP {status}: {}",
            v["value"]
        );
        v["value"].clone()
    }

    fn session_path(&self, rest: &str) -> String {
        format!(
            "/session/{}{rest}",
            self.session.as_deref().unwrap_or("none")
        )
    }

    pub fn goto(&self, url: &str) {
        self.call(
            "POST",
            &self.session_path("/url"),
            Some(json!({ "url": url })),
        );
    }

    fn element(&self, id: &str) -> String {
        let found = self.call(
            "POST",
            &self.session_path("/element"),
            Some(json!({"using": "css selector", "value": format!("#{id}")})),
        );
        found[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("no element #{id}: {found}"))
            .to_string()
    }

    /// Clicks `#id`.
    pub fn click(&self, id: &str) {
        let el = self.element(id);
        self.call(
            "POST",
            &self.session_path(&format!("/element/{el}/click")),
            Some(json!({})),
        );
    }

    /// The rendered text of `#id` (empty when it is hidden).
    pub fn text(&self, id: &str) -> String {
        let el = self.element(id);
        self.call(
            "GET",
            &self.session_path(&format!("/element/{el}/text")),
            None,
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    pub fn attribute(&self, id: &str, name: &str) -> Option<String> {
        let el = self.element(id);
        self.call(
            "GET",
            &self.session_path(&format!("/element/{el}/attribute/{name}")),
            None,
        )
        .as_str()
        .map(str::to_string)
    }

    /// Polls `#id`'s text until `ok` accepts it; panics after `timeout` with the last text seen.
    pub fn wait_text(
        &self,
        id: &str,
        timeout: Duration,
        what: &str,
        ok: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text(id);
            if ok(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "#{id} did not show {what} within {timeout:?}: last text {text:?}, status {:?}",
                self.text("status")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Screenshot of the viewport, PNG bytes.
    pub fn screenshot_png(&self) -> Vec<u8> {
        let encoded = self.call("GET", &self.session_path("/screenshot"), None);
        decode_base64(encoded.as_str().unwrap_or_default())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(id) = self.session.take() {
            let _ = self
                .agent
                .delete(format!("{}/session/{id}", self.base))
                .call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (with padding), as WebDriver returns screenshots.
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let sextets: Vec<u8> = text.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(sextets.len() * 3 / 4);
    for chunk in sextets.chunks(4) {
        let bits = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &s)| acc | (u32::from(s) << (18 - 6 * i)));
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}
