//! The scheduler's HTTP port: the live dashboard (`/`, one page compiled into the binary),
//! `/metrics` for Prometheus, and the JSON the dashboard reads (`/api/overview`, and
//! `/api/events`, server-sent events of it). It listens where the gRPC port does, with the same
//! TLS, and asks for the same credentials: every role that may read the cluster's status (not an
//! agent's; `view.cluster` is enough), given
//! as `Authorization: Bearer …` (Prometheus' `authorization`), or once in the page's address
//! (`/?credential=…`, kept in a cookie).

mod metrics;
mod overview;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{
        Html, IntoResponse, Redirect, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
    routing::get,
};
use futures::Stream;
use ladle_common::{
    credentials::{Accepted, Permission},
    tls::ServerTls,
};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use super::Shared;

/// The dashboard: HTML, CSS and script in one file, no outside resource.
const DASHBOARD: &str = include_str!("dashboard.html");
/// How often the dashboard's stream sends a snapshot.
const EVENT_EVERY: Duration = Duration::from_secs(1);
/// The cookie that carries the dashboard's credential.
const COOKIE: &str = "ladle_credential";
/// Connections served at once (each open dashboard holds one); past it, new ones are closed at
/// once. A TLS handshake and a request's headers must arrive within [`HANDSHAKE`]: a peer that
/// opens connections and sends nothing holds none for long.
const MAX_CONNECTIONS: usize = 512;
const HANDSHAKE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen for the dashboard on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("the dashboard's TLS cannot use the scheduler's certificate: {0}")]
    Tls(String),
}

/// The dashboard's port, bound, before it serves.
pub struct HttpListening {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    pub local: SocketAddr,
}

/// Binds `ip:port`; a port already taken falls back to a free one (said in the log: the
/// scheduler's `status` shows where it is).
pub async fn listen(
    ip: std::net::IpAddr,
    port: u16,
    tls: Option<&ServerTls>,
) -> Result<HttpListening, HttpError> {
    let address = SocketAddr::new(ip, port);
    let listener = match TcpListener::bind(address).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && port != 0 => {
            let l = TcpListener::bind(SocketAddr::new(ip, 0))
                .await
                .map_err(|source| HttpError::Bind { address, source })?;
            warn!(
                "port {port} for the dashboard and metrics is taken (another scheduler?): serving them on {} instead (set http_port to choose)",
                l.local_addr().map_or(0, |a| a.port())
            );
            l
        }
        Err(source) => return Err(HttpError::Bind { address, source }),
    };
    let local = listener
        .local_addr()
        .map_err(|source| HttpError::Bind { address, source })?;
    let tls = tls.map(acceptor).transpose()?;
    Ok(HttpListening {
        listener,
        tls,
        local,
    })
}

/// rustls from the scheduler's own certificate and key (and client CA, for mutual TLS).
fn acceptor(tls: &ServerTls) -> Result<tokio_rustls::TlsAcceptor, HttpError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let bad = |e: &dyn std::fmt::Display| HttpError::Tls(e.to_string());
    ladle_common::tls::install_crypto();
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| bad(&e))?;
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).map_err(|e| bad(&e))?;
    let builder = rustls::ServerConfig::builder();
    let builder = match &tls.client_ca_pem {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| bad(&e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| bad(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[derive(Clone)]
struct HttpState {
    shared: Arc<Shared>,
    accepted: Arc<Accepted>,
    tls: bool,
}

impl HttpListening {
    /// The address to open in a browser.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let host = if self.local.ip().is_unspecified() {
            super::advertise_for(self.local)
        } else {
            self.local.to_string()
        };
        format!("{scheme}://{host}/")
    }

    /// Serves until the task running it is aborted (with the scheduler): each connection in a
    /// task of a set that goes with it.
    pub async fn serve(self, shared: Arc<Shared>, accepted: Arc<Accepted>) {
        let state = HttpState {
            shared,
            accepted,
            tls: self.tls.is_some(),
        };
        let router = Router::new()
            .route("/", get(dashboard))
            .route("/metrics", get(metrics_text))
            .route("/api/overview", get(overview_json))
            .route("/api/events", get(events))
            .layer(middleware::from_fn_with_state(state.clone(), authenticate))
            .with_state(state);
        let mut connections = tokio::task::JoinSet::new();
        info!("dashboard and metrics at {}", self.url());
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    warn!("the dashboard's port cannot accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            while connections.try_join_next().is_some() {}
            if connections.len() >= MAX_CONNECTIONS {
                debug!(%peer, "the dashboard's port has {MAX_CONNECTIONS} connections: closing a new one");
                continue;
            }
            let router = router.clone();
            let tls = self.tls.clone();
            connections.spawn(async move {
                let service = hyper_util::service::TowerToHyperService::new(router);
                let mut builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                builder
                    .http1()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HANDSHAKE);
                builder
                    .http2()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .keep_alive_interval(Some(Duration::from_secs(20)))
                    .keep_alive_timeout(HANDSHAKE);
                let served = match tls {
                    Some(tls) => match tokio::time::timeout(HANDSHAKE, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            builder
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await
                        }
                        Ok(Err(e)) => {
                            debug!(%peer, "a TLS handshake on the dashboard's port failed: {e}");
                            return;
                        }
                        Err(_) => {
                            debug!(%peer, "no TLS handshake on the dashboard's port within {HANDSHAKE:?}");
                            return;
                        }
                    },
                    None => {
                        builder
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await
                    }
                };
                if let Err(e) = served {
                    debug!(%peer, "a dashboard connection ended: {e}");
                }
            });
        }
    }
}

/// The credential a request presents: its bearer token, else the dashboard's cookie.
fn presented(headers: &HeaderMap) -> Option<String> {
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(bearer.trim().to_owned());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(COOKIE)?
                .strip_prefix('=')
                .map(str::to_owned)
        })
}

/// `credential=…` in a query string.
fn credential_in(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == "credential")
        .map(|(_, value)| value.into_owned())
}

/// Whether a credential can be a cookie's value as it is (RFC 6265's cookie-octets): `init`'s
/// always can; a shared token of an operator's choosing may not.
fn cookie_safe(secret: &str) -> bool {
    !secret.is_empty()
        && secret
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'\\'))
}

async fn authenticate(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    if state.accepted.is_open() {
        return next.run(request).await;
    }
    let allows = |secret: &str| {
        state
            .accepted
            .grant_of(secret.as_bytes())
            .is_some_and(|g| g.allows(Permission::Read))
    };
    // The page's address carried the credential once: keep it in a cookie, and take it out of
    // the address (and so out of the browser's history).
    if let Some(secret) = credential_in(request.uri().query())
        && allows(&secret)
    {
        if !cookie_safe(&secret) {
            return (
                StatusCode::BAD_REQUEST,
                "this credential cannot be kept in a cookie (it holds spaces, quotes, commas, \
                 semicolons or backslashes): send it as `Authorization: Bearer …` instead\n",
            )
                .into_response();
        }
        let secure = if state.tls { "; Secure" } else { "" };
        // Lax: the address may be opened from another application (a chat, a terminal), and
        // the page only reads.
        let cookie = format!("{COOKIE}={secret}; HttpOnly; SameSite=Lax; Path=/{secure}");
        // Relative, so that it stays on this host whatever the path holds ("//elsewhere/").
        let mut response = Redirect::to("./").into_response();
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        return response;
    }
    if presented(request.headers()).is_some_and(|s| allows(&s)) {
        return next.run(request).await;
    }
    let why = if presented(request.headers()).is_some()
        || credential_in(request.uri().query()).is_some()
    {
        "the credential presented is not one this scheduler accepts"
    } else {
        "no credential was presented"
    };
    state.shared.refusals.note("the dashboard's port", why);
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"ladle\"")],
        format!(
            "{why}. This scheduler asks for a credential (of a role that may read the cluster's \
             status; view.cluster is enough): \
             `ladle-scheduler dashboard` prints the address to open, with it; Prometheus sends \
             it as `authorization: {{ credentials: … }}`.\n"
        ),
    )
        .into_response()
}

async fn dashboard() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
            ),
        ],
        Html(DASHBOARD),
    )
}

/// OpenMetrics to whoever asks for it (Prometheus does), Prometheus' text format otherwise.
async fn metrics_text(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    match metrics::render(&state.shared) {
        Ok(text) if openmetrics => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            metrics::prometheus_text(&text),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {e}\n"),
        )
            .into_response(),
    }
}

async fn overview_json(State(state): State<HttpState>) -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(overview::overview(&state.shared)),
    )
        .into_response()
}

/// A snapshot at once, then one every [`EVENT_EVERY`], for as long as the page is open.
async fn events(
    State(state): State<HttpState>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let mut ticks = tokio::time::interval(EVENT_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = futures::stream::unfold((ticks, state), |(mut ticks, state)| async move {
        ticks.tick().await;
        let event = SseEvent::default()
            .event("overview")
            .json_data(overview::overview(&state.shared))
            .unwrap_or_else(|e| SseEvent::default().event("error").data(e.to_string()));
        Some((Ok(event), (ticks, state)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
