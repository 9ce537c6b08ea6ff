//! A headless Chromium for tests of the pages the scheduler serves: open a URL, wait for a
//! JavaScript condition, read values out of the page, save a screenshot.
//!
//! It speaks the Chrome DevTools protocol itself over one `tungstenite` WebSocket per page rather
//! than through `headless_chrome` or `chromiumoxide`: the tests need five commands
//! (`Target.createTarget`, `Page.navigate`, `Runtime.evaluate`, `Page.getLayoutMetrics`,
//! `Page.captureScreenshot`), while `headless_chrome` generates bindings for the whole protocol
//! in its build script (tens of thousands of lines, minutes on a small CI machine) and pulls in
//! `regex`, `derive_builder`, `url` and `which`, and `chromiumoxide` is async, generates the same
//! bindings and ties us to its choice of runtime. `tungstenite` (blocking, with `rand`, `http`,
//! `sha1`) builds in seconds and never fetches a browser.

use std::{
    ffi::OsString,
    fs,
    io::{ErrorKind, Read},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde_json::{Value, json};
use tempfile::TempDir;
use thiserror::Error;
use tungstenite::{Message, WebSocket};

/// How long one protocol command may take before the browser counts as hung.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long Chromium may take to start listening (a cold start on a loaded CI machine is slow).
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);
/// The size a person would look at the dashboard in; screenshots are this wide.
const WINDOW: (u32, u32) = (1280, 800);
/// A screenshot of a runaway page is not worth hundreds of megabytes.
const MAX_SCREENSHOT_HEIGHT: f64 = 8000.0;

#[derive(Debug, Error)]
pub enum BrowserError {
    #[error("chromium not found: apt-get install chromium (or set LADLE_CHROMIUM to a browser)")]
    NotFound,
    #[error("cannot start {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make a profile directory for chromium: {0}")]
    Profile(std::io::Error),
    #[error("chromium exited ({status}) before it listened; its output:\n{log}")]
    Exited { status: ExitStatus, log: String },
    #[error("chromium did not listen within {0:?}; its output:\n{1}")]
    LaunchTimeout(Duration, String),
    #[error("DevTools connection to {url}: {message}")]
    Connection { url: String, message: String },
    #[error("DevTools command {method} failed: {message}")]
    Command { method: String, message: String },
    #[error("no answer to DevTools command {method} within {waited:?}")]
    CommandTimeout { method: String, waited: Duration },
    #[error("cannot open {url}: {message}")]
    Navigation { url: String, message: String },
    #[error("`{expression}` threw: {message}")]
    Script { expression: String, message: String },
    #[error("`{expression}` was still not truthy after {waited:?}; last: {last}")]
    WaitTimeout {
        expression: String,
        waited: Duration,
        last: String,
    },
    #[error("cannot write the screenshot {path}: {source}")]
    Screenshot {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The browser to use: `LADLE_CHROMIUM` if set, else the first of the usual names on `PATH`.
pub fn chromium_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("LADLE_CHROMIUM") {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let dirs = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .flat_map(|name| std::env::split_paths(&dirs).map(move |dir| dir.join(name)))
    .find(|candidate| candidate.is_file())
}

/// A headless Chromium with a profile of its own; killed, and its profile removed, on drop.
pub struct Browser {
    child: Child,
    port: u16,
    connection: Mutex<Connection>,
    // Dropped after the child is gone (see Drop), so Chromium never writes into a removed dir.
    profile: Option<TempDir>,
}

impl Browser {
    pub fn launch() -> Result<Browser, BrowserError> {
        let path = chromium_path().ok_or(BrowserError::NotFound)?;
        let profile = tempfile::Builder::new()
            .prefix("ladle-chromium-")
            .tempdir()
            .map_err(BrowserError::Profile)?;
        let log_path = profile.path().join("chromium.log");
        let log = fs::File::create(&log_path).map_err(BrowserError::Profile)?;
        let log_err = log.try_clone().map_err(BrowserError::Profile)?;
        let mut command = Command::new(&path);
        command
            .args([
                "--headless=new",
                // Root in a container has no user namespaces for the sandbox.
                "--no-sandbox",
                "--disable-gpu",
                // Docker's /dev/shm is 64 MiB, which renderers exhaust.
                "--disable-dev-shm-usage",
                // Port 0: Chromium picks one and writes it to DevToolsActivePort, so parallel
                // tests never collide.
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--metrics-recording-only",
                "--mute-audio",
                "--hide-scrollbars",
                "--password-store=basic",
                "--use-mock-keychain",
                // A page under test is never in the foreground of a real window; without these
                // its timers and frames are throttled as if it were a hidden tab.
                "--disable-background-timer-throttling",
                "--disable-backgrounding-occluded-windows",
                "--disable-renderer-backgrounding",
            ])
            .arg(format!("--window-size={},{}", WINDOW.0, WINDOW.1))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // Its own process group, so that Drop can end the renderers and helpers with it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().map_err(|source| BrowserError::Spawn {
            path: path.clone(),
            source,
        })?;
        let mut browser = Browser {
            child,
            port: 0,
            connection: Mutex::new(Connection::closed()),
            profile: Some(profile),
        };
        let (port, ws_path) = browser.wait_listening(&log_path)?;
        browser.port = port;
        browser.connection = Mutex::new(Connection::open(port, &ws_path)?);
        Ok(browser)
    }

    /// Chromium writes "<port>\n<browser ws path>" to DevToolsActivePort once it listens.
    fn wait_listening(&mut self, log_path: &Path) -> Result<(u16, String), BrowserError> {
        let active = self
            .profile
            .as_ref()
            .map(|p| p.path().join("DevToolsActivePort"))
            .unwrap_or_default();
        let deadline = Instant::now() + LAUNCH_TIMEOUT;
        loop {
            if let Ok(text) = fs::read_to_string(&active) {
                let mut lines = text.lines();
                // The file can be seen half-written: both lines or try again.
                if let (Some(port), Some(ws_path)) = (lines.next(), lines.next())
                    && let Ok(port) = port.trim().parse::<u16>()
                {
                    return Ok((port, ws_path.trim().to_owned()));
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(BrowserError::Exited {
                    status,
                    log: log_tail(log_path),
                });
            }
            if Instant::now() > deadline {
                return Err(BrowserError::LaunchTimeout(
                    LAUNCH_TIMEOUT,
                    log_tail(log_path),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A new tab showing `url`, once its load event has fired.
    pub fn open(&self, url: &str) -> Result<Page, BrowserError> {
        let target = self
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .call("Target.createTarget", json!({ "url": "about:blank" }))?;
        let target_id = target["targetId"]
            .as_str()
            .ok_or_else(|| BrowserError::Command {
                method: "Target.createTarget".into(),
                message: format!("no targetId in {target}"),
            })?
            .to_owned();
        let mut connection = Connection::open(self.port, &format!("/devtools/page/{target_id}"))?;
        connection.call("Page.enable", json!({}))?;
        connection.events.clear();
        let navigated = connection.call("Page.navigate", json!({ "url": url }))?;
        if let Some(error) = navigated["errorText"].as_str() {
            return Err(BrowserError::Navigation {
                url: url.to_owned(),
                message: error.to_owned(),
            });
        }
        connection
            .wait_event("Page.loadEventFired", COMMAND_TIMEOUT)
            .map_err(|error| match error {
                BrowserError::CommandTimeout { waited, .. } => BrowserError::Navigation {
                    url: url.to_owned(),
                    message: format!("no load event within {waited:?}"),
                },
                other => other,
            })?;
        Ok(Page {
            connection: Mutex::new(connection),
        })
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Asked politely, Chromium ends its helpers and flushes nothing we need; a hung one is
        // killed with its whole group.
        let closed = self
            .connection
            .get_mut()
            .map(|c| c.send_only("Browser.close"))
            .unwrap_or(false);
        let deadline = Instant::now() + Duration::from_secs(5);
        while closed && Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's process group; it touches no memory.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(self.profile.take());
    }
}

/// One tab, on a DevTools connection of its own.
pub struct Page {
    connection: Mutex<Connection>,
}

impl Page {
    /// The value of the expression (awaited if it is a promise), as JSON; `undefined` is null.
    pub fn eval(&self, js: &str) -> Result<Value, BrowserError> {
        let answer = self.lock().call(
            "Runtime.evaluate",
            json!({ "expression": js, "returnByValue": true, "awaitPromise": true }),
        )?;
        if let Some(details) = answer.get("exceptionDetails") {
            let message = details["exception"]["description"]
                .as_str()
                .or_else(|| details["text"].as_str())
                .unwrap_or("an exception")
                .to_owned();
            return Err(BrowserError::Script {
                expression: js.to_owned(),
                message,
            });
        }
        let result = &answer["result"];
        Ok(match result["unserializableValue"].as_str() {
            // NaN, Infinity, -0 and BigInts have no JSON form; their text is what a test can use.
            Some("NaN") => Value::Null,
            Some(text) => Value::String(text.to_owned()),
            None => result.get("value").cloned().unwrap_or(Value::Null),
        })
    }

    /// Polls the expression until it is truthy and returns that value. An expression that
    /// throws (say, on an element not there yet) counts as not yet true.
    pub fn wait_for(&self, js: &str, deadline: Duration) -> Result<Value, BrowserError> {
        let until = Instant::now() + deadline;
        loop {
            let last = match self.eval(js) {
                Ok(value) if truthy(&value) => return Ok(value),
                Ok(value) => value.to_string(),
                Err(BrowserError::Script { message, .. }) => format!("threw {message}"),
                Err(other) => return Err(other),
            };
            if Instant::now() >= until {
                return Err(BrowserError::WaitTimeout {
                    expression: js.to_owned(),
                    waited: deadline,
                    last,
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// A PNG of the whole page (not only the window), creating the parent directories.
    pub fn screenshot(&self, path: &Path) -> Result<(), BrowserError> {
        let mut connection = self.lock();
        let metrics = connection.call("Page.getLayoutMetrics", json!({}))?;
        let size = &metrics["cssContentSize"];
        let width = size["width"].as_f64().unwrap_or(f64::from(WINDOW.0));
        let height = size["height"]
            .as_f64()
            .unwrap_or(f64::from(WINDOW.1))
            .min(MAX_SCREENSHOT_HEIGHT);
        let shot = connection.call(
            "Page.captureScreenshot",
            json!({
                "format": "png",
                "captureBeyondViewport": true,
                "clip": { "x": 0, "y": 0, "width": width, "height": height, "scale": 1 },
            }),
        )?;
        drop(connection);
        let png = shot["data"]
            .as_str()
            .and_then(|data| base64::engine::general_purpose::STANDARD.decode(data).ok())
            .ok_or_else(|| BrowserError::Command {
                method: "Page.captureScreenshot".into(),
                message: "no base64 PNG in the answer".into(),
            })?;
        let write = |path: &Path| -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
            fs::write(path, &png)
        };
        write(path).map_err(|source| BrowserError::Screenshot {
            path: path.to_owned(),
            source,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic mid-command leaves the socket as it was; the next command still works.
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// JavaScript's truthiness, for values that came back as JSON.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// A DevTools WebSocket: commands numbered, answers matched by number, events kept for
/// `wait_event`.
struct Connection {
    socket: Option<WebSocket<TcpStream>>,
    url: String,
    next_id: u64,
    events: Vec<Value>,
}

impl Connection {
    fn closed() -> Self {
        Self {
            socket: None,
            url: String::new(),
            next_id: 1,
            events: Vec::new(),
        }
    }

    fn open(port: u16, path: &str) -> Result<Self, BrowserError> {
        let url = format!("ws://127.0.0.1:{port}{path}");
        let failed = |message: String| BrowserError::Connection {
            url: url.clone(),
            message,
        };
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&address, COMMAND_TIMEOUT)
            .map_err(|e| failed(e.to_string()))?;
        stream
            .set_read_timeout(Some(COMMAND_TIMEOUT))
            .map_err(|e| failed(e.to_string()))?;
        let (mut socket, _) =
            tungstenite::client(url.as_str(), stream).map_err(|e| failed(e.to_string()))?;
        // From here reads wake often, so a command's own deadline is what bounds it.
        socket
            .get_mut()
            .set_read_timeout(Some(POLL))
            .map_err(|e| failed(e.to_string()))?;
        Ok(Self {
            socket: Some(socket),
            url,
            next_id: 1,
            events: Vec::new(),
        })
    }

    fn send(&mut self, method: &str, params: Value) -> Result<u64, BrowserError> {
        let id = self.next_id;
        self.next_id += 1;
        let text = json!({ "id": id, "method": method, "params": params }).to_string();
        let socket = self
            .socket
            .as_mut()
            .ok_or_else(|| BrowserError::Connection {
                url: self.url.clone(),
                message: "not connected".into(),
            })?;
        socket
            .send(Message::text(text))
            .map_err(|e| BrowserError::Connection {
                url: self.url.clone(),
                message: e.to_string(),
            })?;
        Ok(id)
    }

    /// Sends without waiting for the answer (Browser.close answers, if at all, as it dies).
    fn send_only(&mut self, method: &str) -> bool {
        self.send(method, json!({})).is_ok()
    }

    /// The next message, or None if none came within one poll interval.
    fn read(&mut self) -> Result<Option<Value>, BrowserError> {
        let url = &self.url;
        let failed = |message: String| BrowserError::Connection {
            url: url.clone(),
            message,
        };
        let socket = self
            .socket
            .as_mut()
            .ok_or_else(|| failed("not connected".into()))?;
        match socket.read() {
            Ok(Message::Text(text)) => serde_json::from_str(text.as_str())
                .map(Some)
                .map_err(|e| failed(format!("not JSON ({e}): {}", text.as_str()))),
            Ok(Message::Close(_)) => Err(failed("closed by the browser".into())),
            Ok(_) => Ok(None),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                Ok(None)
            }
            Err(e) => Err(failed(e.to_string())),
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Result<Value, BrowserError> {
        let id = self.send(method, params)?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            match self.read()? {
                Some(message) if message["id"].as_u64() == Some(id) => {
                    if let Some(error) = message.get("error") {
                        return Err(BrowserError::Command {
                            method: method.to_owned(),
                            message: error["message"]
                                .as_str()
                                .map_or_else(|| error.to_string(), str::to_owned),
                        });
                    }
                    return Ok(message.get("result").cloned().unwrap_or(Value::Null));
                }
                Some(message) if message.get("method").is_some() => self.keep_event(message),
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(BrowserError::CommandTimeout {
                    method: method.to_owned(),
                    waited: COMMAND_TIMEOUT,
                });
            }
        }
    }

    fn keep_event(&mut self, event: Value) {
        // Only the latest matter; a chatty page must not grow this without bound.
        if self.events.len() >= 256 {
            self.events.remove(0);
        }
        self.events.push(event);
    }

    fn wait_event(&mut self, method: &str, within: Duration) -> Result<Value, BrowserError> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(at) = self.events.iter().position(|e| e["method"] == method) {
                return Ok(self.events.remove(at));
            }
            if let Some(message) = self.read()?
                && message.get("method").is_some()
            {
                self.keep_event(message);
            }
            if Instant::now() > deadline {
                return Err(BrowserError::CommandTimeout {
                    method: method.to_owned(),
                    waited: within,
                });
            }
        }
    }
}

fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
