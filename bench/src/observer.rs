//! `--observed`: what an operator's attention costs the cluster. A dashboard left open (its
//! server-sent events, read as they come) and a Prometheus that scrapes `/metrics` every second
//! (and fetches the dashboard's snapshot once a second), on the scheduler's HTTP port, for the
//! whole run.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

pub struct Observer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    events: Arc<AtomicU64>,
    timings: Arc<Mutex<Timings>>,
}

/// Each scrape's and each snapshot's seconds and bytes.
#[derive(Default)]
struct Timings {
    scrape_s: Vec<f64>,
    scrape_bytes: Vec<f64>,
    overview_s: Vec<f64>,
    overview_bytes: Vec<f64>,
}

fn median_max(values: &mut [f64]) -> serde_json::Value {
    if values.is_empty() {
        return serde_json::Value::Null;
    }
    values.sort_by(f64::total_cmp);
    serde_json::json!({ "median": values[values.len() / 2], "max": values[values.len() - 1], "n": values.len() })
}

/// `host:port` of an `http://host:port/` address.
fn authority(url: &str) -> anyhow::Result<String> {
    url.strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/').to_owned())
        .ok_or_else(|| anyhow::anyhow!("--observed needs a plaintext dashboard, not {url}"))
}

impl Observer {
    pub fn start(url: &str) -> anyhow::Result<Self> {
        let host = authority(url)?;
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(AtomicU64::new(0));
        let timings: Arc<Mutex<Timings>> = Arc::default();
        let dashboard = {
            let (host, stop, events) = (host.clone(), stop.clone(), events.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = follow_events(&host, &stop, &events);
                }
            })
        };
        let prometheus = {
            let (stop, timings) = (stop.clone(), timings.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let scraped = get(
                        &host,
                        "/metrics",
                        "application/openmetrics-text; version=1.0.0",
                    );
                    let scrape_s = t.elapsed().as_secs_f64();
                    let t = Instant::now();
                    let overview = get(&host, "/api/overview", "application/json");
                    let overview_s = t.elapsed().as_secs_f64();
                    {
                        let mut timings = timings.lock().unwrap_or_else(|p| p.into_inner());
                        if let Ok(bytes) = scraped {
                            timings.scrape_s.push(scrape_s);
                            timings.scrape_bytes.push(bytes as f64);
                        }
                        if let Ok(bytes) = overview {
                            timings.overview_s.push(overview_s);
                            timings.overview_bytes.push(bytes as f64);
                        }
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
        };
        Ok(Self {
            stop,
            threads: vec![dashboard, prometheus],
            events,
            timings,
        })
    }

    /// Stops watching; what it saw, as one line of the benchmark's output.
    pub fn finish(self, name: &str) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let mut t = std::mem::take(&mut *self.timings.lock().unwrap_or_else(|p| p.into_inner()));
        super::emit(
            name,
            serde_json::json!({ "dashboard": "server-sent events", "scrape_every_s": 1 }),
            serde_json::json!({
                "events_received": self.events.load(Ordering::Relaxed),
                "scrapes": t.scrape_s.len(),
                "scrape_s": median_max(&mut t.scrape_s),
                "scrape_bytes": median_max(&mut t.scrape_bytes),
                "overview_s": median_max(&mut t.overview_s),
                "overview_bytes": median_max(&mut t.overview_bytes),
            }),
        );
    }
}

fn follow_events(host: &str, stop: &AtomicBool, events: &AtomicU64) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    write!(
        stream,
        "GET /api/events HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
    )?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) if line.starts_with("event: overview") => {
                events.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One GET answered with 200: the bytes of the whole response.
fn get(host: &str, path: &str, accept: &str) -> std::io::Result<usize> {
    let mut stream = TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    if response.starts_with(b"HTTP/1.1 200") {
        Ok(response.len())
    } else {
        Err(std::io::Error::other(format!(
            "GET {path} was not answered with 200"
        )))
    }
}
