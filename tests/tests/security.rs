//! A cluster made by `ladle-scheduler init`, run with the real binaries on loopback: TLS on every
//! connection, a credential per role, and identities nobody else can take over.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use ladle_tests::{Process, bin, clean_command, init_cluster, last_json, test_driver, wait_for};
use serde_json::Value;

/// A TLS scheduler on loopback serving the cluster in `files`; its address (`https://…`).
fn serve(files: &Path, dir: &Path) -> (Process, String) {
    serve_with(dir, |command| {
        command
            .arg("--cluster-file")
            .arg(files.join("scheduler.cluster"));
    })
}

/// A TLS scheduler on loopback in `dir`, its certificate set up by `secure`; its address.
fn serve_with(dir: &Path, secure: impl FnOnce(&mut std::process::Command)) -> (Process, String) {
    let address_file = dir.join("address");
    let mut command = clean_command(&bin("ladle-scheduler"));
    command
        .args([
            "serve",
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--no-multicast",
        ])
        .arg("--address-file")
        .arg(&address_file)
        .arg("--state-dir")
        .arg(dir.join("scheduler-state"))
        .env("LADLE_HEARTBEAT_INTERVAL", "250ms")
        .env("LADLE_HTTP_PORT", "0");
    secure(&mut command);
    let process = Process::spawn(command, dir.join("scheduler.log"));
    let port = ladle_tests::listening_port(&address_file);
    let address = fs::read_to_string(&address_file)
        .expect("address file")
        .trim()
        .to_owned();
    assert_eq!(address, format!("https://127.0.0.1:{port}"));
    (process, address)
}

fn agent(address: &str, file: &Path, state: &Path, name: &str) -> Process {
    let mut command = clean_command(&bin("ladle-agent"));
    command
        .args(["--hostname", name, "--cpu-slots", "2", "--no-multicast"])
        .args(["--scheduler", address])
        .arg("--cluster-file")
        .arg(file)
        .arg("--state-dir")
        .arg(state);
    Process::spawn(command, state.with_extension("log"))
}

/// The CLI against `address`, holding `file` (or nothing).
fn cli(address: &str, file: Option<&Path>, args: &[&str]) -> Output {
    let mut command = clean_command(&bin("ladle-scheduler"));
    command.args(args).env("LADLE_SCHEDULER", address);
    if let Some(file) = file {
        command.env("LADLE_CLUSTER_FILE", file);
    }
    command.output().expect("the CLI runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the call was refused, with a message containing `says`.
fn refused(out: &Output, says: &str) {
    assert!(!out.status.success(), "should have been refused");
    assert!(stderr(out).contains(says), "{}", stderr(out));
}

fn agents(address: &str, file: &Path) -> Vec<Value> {
    let out = cli(address, Some(file), &["agents", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn alive(rows: &[Value], name: &str) -> bool {
    rows.iter()
        .any(|r| r["hostname"] == name && r["state"] == "alive")
}

#[test]
fn a_cluster_from_init_is_encrypted_and_each_role_may_do_only_its_own_calls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = init_cluster(&dir.path().join("cluster"), "prod", None);
    let other = init_cluster(&dir.path().join("other"), "prod", None);
    let (_scheduler, address) = serve(&files, dir.path());
    let file = |name: &str| -> PathBuf { files.join(format!("{name}.cluster")) };
    let _agent = agent(&address, &file("agent"), &dir.path().join("a1"), "a1");
    wait_for("the agent to join", Duration::from_secs(30), || {
        alive(&agents(&address, &file("view")), "a1").then_some(())
    });

    // The door: TLS with credentials per role, and nothing in the clear.
    let status = cli(&address, Some(&file("view")), &["status", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).expect("status --json");
    assert_eq!(status["security"], "TLS, credentials per role", "{status}");
    assert_eq!(status["cluster"], "prod", "{status}");
    let plaintext = address.replacen("https://", "http://", 1);
    refused(
        &cli(&plaintext, None, &["status"]),
        "it most likely requires TLS",
    );
    // Another cluster's files: its trust anchor does not vouch for this scheduler.
    let wrong = other.join("admin.cluster");
    let out = cli(&address, Some(&wrong), &["status"]);
    refused(&out, "does not vouch");
    assert!(
        stderr(&out).contains(&wrong.display().to_string()),
        "{}",
        stderr(&out)
    );

    // What each role may do, and what it may not.
    for role in ["view", "driver", "admin", "scheduler"] {
        let out = cli(&address, Some(&file(role)), &["status"]);
        assert!(out.status.success(), "{role}: {}", stderr(&out));
    }
    refused(
        &cli(&address, Some(&file("agent")), &["status"]),
        "an agent credential may not read the cluster's status",
    );
    for role in ["view", "driver"] {
        refused(
            &cli(&address, Some(&file(role)), &["drain", "a1"]),
            "credential may not drain or undrain agents",
        );
        refused(
            &cli(&address, Some(&file(role)), &["cancel", "no-such-job"]),
            "credential may not cancel jobs",
        );
    }
    for (role, verb) in [("admin", "drain"), ("scheduler", "undrain")] {
        let out = cli(&address, Some(&file(role)), &[verb, "a1"]);
        assert!(out.status.success(), "{role} {verb}: {}", stderr(&out));
    }
    // An admin passes the door; the job is then looked for.
    refused(
        &cli(&address, Some(&file("admin")), &["cancel", "no-such-job"]),
        "no-such-job",
    );

    // A driver runs jobs; an agent's or a viewer's credential does not.
    let run = |role: &str| {
        clean_command(&test_driver())
            .arg("panic")
            .env("LADLE_SCHEDULER", &address)
            .env("LADLE_CLUSTER_FILE", file(role))
            .env("RUST_LOG", "warn")
            .output()
            .expect("the driver runs")
    };
    let out = run("driver");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(last_json(&String::from_utf8_lossy(&out.stdout))["ok"], 999);
    refused(&run("agent"), "an agent credential may not run jobs");
    refused(&run("view"), "a view credential may not");

    // A driver's credential does not make an agent.
    let intruder = agent(&address, &file("driver"), &dir.path().join("a2"), "a2");
    wait_for("the agent to be refused", Duration::from_secs(30), || {
        intruder
            .output()
            .contains("a driver credential may not join as an agent")
            .then_some(())
    });
    assert!(!alive(&agents(&address, &file("view")), "a2"));

    // Each refusal was counted.
    let status = cli(&address, Some(&file("view")), &["status", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).expect("status --json");
    assert!(status["calls_refused"].as_u64() >= Some(8), "{status}");

    dashboard_port_is_tls_with_the_same_credentials(&address, &files, dir.path());
}

/// The dashboard's port: TLS with the cluster's certificate, and the credentials of every role
/// but the agents'; a browser's credential goes from the address into a cookie.
fn dashboard_port_is_tls_with_the_same_credentials(address: &str, files: &Path, dir: &Path) {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "skipped: the dashboard's TLS check (curl is not installed: apt-get install curl)"
        );
        return;
    }
    let ca = dir.join("ca.pem");
    let file = |name: &str| -> PathBuf { files.join(format!("{name}.cluster")) };
    let out = cli(
        address,
        Some(&file("view")),
        &["dashboard", "--write-ca", ca.to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let page = text
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .unwrap_or_else(|| panic!("the dashboard's address: {text}"));
    let (url, credential) = page
        .split_once("?credential=")
        .expect("the credential in the address");
    assert!(credential.starts_with("ladle-view-"), "{credential}");
    let port = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .expect("a port")
        .to_owned();
    let base = format!("https://ladle-scheduler:{port}");
    // curl trusting only the cluster's CA, reaching the scheduler by its certificate's name.
    let curl = |path: &str, extra: &[&str]| -> (String, String) {
        let out = std::process::Command::new("curl")
            .args(["-s", "-D", "-", "-o", "-", "--cacert"])
            .arg(&ca)
            .args(["--resolve", &format!("ladle-scheduler:{port}:127.0.0.1")])
            .args(extra)
            .arg(format!("{base}{path}"))
            .output()
            .expect("curl runs");
        assert!(out.status.success(), "curl {path}: {}", stderr(&out));
        let all = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
        (head.to_owned(), body.to_owned())
    };
    let (head, body) = curl("/metrics", &[]);
    assert!(
        head.starts_with("HTTP/2 401") || head.starts_with("HTTP/1.1 401"),
        "{head}"
    );
    assert!(body.contains("no credential was presented"), "{body}");
    let bearer = |c: &str| format!("Authorization: Bearer {c}");
    let (head, body) = curl("/metrics", &["-H", &bearer(credential)]);
    assert!(head.contains(" 200"), "{head}");
    assert!(body.contains("ladle_agents{state=\"alive\"} 1"), "{body}");
    let agent_credential = fs::read_to_string(file("agent")).expect("agent.cluster");
    let agent_credential = agent_credential
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .find(|w| w.starts_with("ladle-agent-"))
        .expect("the agent's credential in its file");
    let (head, _) = curl("/metrics", &["-H", &bearer(agent_credential)]);
    assert!(
        head.contains(" 401"),
        "an agent's credential reads no metrics: {head}"
    );
    // The page's address with the credential: a cookie, and the address without it.
    let (head, _) = curl(&format!("/?credential={credential}"), &[]);
    assert!(head.contains(" 303"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("location: ./\r\n"), "{head}");
    assert!(
        lower.contains(&format!(
            "set-cookie: ladle_credential={credential}; httponly; samesite=lax; path=/; secure"
        )),
        "{head}"
    );
    let (head, body) = curl(
        "/",
        &["-H", &format!("Cookie: ladle_credential={credential}")],
    );
    assert!(head.contains(" 200") && body.contains("<html"), "{head}");
    let (head, body) = curl(
        "/api/overview",
        &["-H", &format!("Cookie: ladle_credential={credential}")],
    );
    assert!(head.contains(" 200"), "{head}");
    let overview: Value = serde_json::from_str(&body).expect("the overview is JSON");
    assert_eq!(overview["cluster"], "prod", "{overview}");
}

#[test]
fn an_agent_id_or_a_session_claimed_without_its_secret_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = init_cluster(&dir.path().join("cluster"), "default", None);
    let (_scheduler, address) = serve(&files, dir.path());
    let agent_file = files.join("agent.cluster");
    let view = files.join("view.cluster");
    let real_state = dir.path().join("real");
    let _real = agent(&address, &agent_file, &real_state, "real");
    wait_for("the agent to join", Duration::from_secs(30), || {
        (alive(&agents(&address, &view), "real") && real_state.join("agent-secret").exists())
            .then_some(())
    });

    // Another agent of the cluster presents the real one's id, without its secret.
    let fake_state = dir.path().join("fake");
    fs::create_dir_all(&fake_state).expect("state dir");
    fs::copy(real_state.join("agent-id"), fake_state.join("agent-id")).expect("copy the id");
    let fake = agent(&address, &agent_file, &fake_state, "fake");
    wait_for(
        "the impostor to be refused",
        Duration::from_secs(30),
        || {
            fake.output()
                .contains("belongs to another connection")
                .then_some(())
        },
    );
    let rows = agents(&address, &view);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(alive(&rows, "real"), "{rows:?}");

    // A driver takes over a running job by its id (listed to anyone who may read jobs).
    let mut job = Process::spawn(
        {
            let mut command = clean_command(&test_driver());
            command
                .arg("hang")
                .env("LADLE_SCHEDULER", &address)
                .env("LADLE_CLUSTER_FILE", files.join("driver.cluster"))
                .env("RUST_LOG", "warn");
            command
        },
        dir.path().join("job.log"),
    );
    let job_id = wait_for("the job to be listed", Duration::from_secs(30), || {
        let out = cli(&address, Some(&view), &["jobs", "--json"]);
        let rows: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
        rows.first()?["id"].as_str().map(str::to_owned)
    });
    let out = clean_command(&test_driver())
        .args(["claim_session", &job_id])
        .env("LADLE_SCHEDULER", &address)
        .env("LADLE_CLUSTER_FILE", files.join("driver.cluster"))
        .output()
        .expect("the claim runs");
    let said = last_json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(said["code"], "PermissionDenied", "{said}");
    assert!(
        said["message"]
            .as_str()
            .is_some_and(|m| m.contains("belongs to another connection")),
        "{said}"
    );
    // The job's own driver is still connected to it.
    let out = cli(&address, Some(&view), &["jobs", "--json"]);
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(job.try_exit().is_none(), "{}", job.output());
}

/// The README's commands for a cluster of several machines, in order.
fn readme_commands() -> Vec<String> {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("## A cluster of several machines")
        .nth(1)
        .expect("the README has the section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the section opens with a sh block");
    block
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Runs a README line as written, on `host`, in `cwd`: the program named first is ours (the
/// binaries this test suite built), and `cargo run --release` stands for the user's program.
fn as_written(
    host: &ladle_tests::netns::Host,
    line: &str,
    cwd: &Path,
    state: &Path,
) -> std::process::Command {
    let mut words = line.split_whitespace().peekable();
    let mut env = Vec::new();
    while let Some((key, value)) = words.peek().and_then(|w| w.split_once('=')) {
        env.push((key.to_owned(), value.to_owned()));
        words.next();
    }
    let program = words.next().expect("a command");
    let rest: Vec<&str> = words.collect();
    let mut command = match (program, rest.as_slice()) {
        ("cargo", ["run", "--release"]) => {
            let mut command = host.command(&test_driver());
            command.arg("panic");
            command
        }
        (ours, args) => {
            let mut command = host.command(&bin(ours));
            command.args(args);
            command
        }
    };
    command
        .current_dir(cwd)
        .envs(env)
        // Root's default state directories are the machine's own: keep the test's apart.
        .env("LADLE_STATE_DIR", state)
        .env("RUST_LOG", "info");
    command
}

#[test]
fn the_readmes_cluster_of_several_machines_is_encrypted_and_authenticated() {
    let lab = match ladle_tests::netns::Lab::new(3) {
        Ok(lab) => lab,
        Err(why) => {
            println!("skipped: cannot make network namespaces here ({why})");
            return;
        }
    };
    if let Err(why) = lab.name_hosts(&[(0, "head")]) {
        println!("skipped: cannot name the test hosts ({why})");
        return;
    }
    let [head, node, user] = &lab.hosts[..] else {
        panic!("three hosts")
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let cwd = |name: &str| {
        let path = dir.path().join(name);
        fs::create_dir_all(&path).expect("a directory per machine");
        path
    };
    let (head_dir, node_dir, user_dir) = (cwd("head"), cwd("node"), cwd("user"));

    let lines = readme_commands();
    let expected = [
        "ladle-scheduler init",
        "ladle-scheduler serve",
        "ladle-agent",
        "LADLE_CLUSTER_FILE=driver.cluster cargo run",
    ];
    assert_eq!(lines.len(), expected.len(), "{lines:?}");
    for (line, starts) in lines.iter().zip(expected) {
        assert!(
            line.starts_with(starts),
            "{line:?} should start with {starts:?}"
        );
    }

    let init = as_written(head, &lines[0], &head_dir, &head_dir.join("state")).output();
    let init = init.expect("init runs");
    assert!(init.status.success(), "{}", stderr(&init));
    let scheduler = Process::spawn(
        as_written(head, &lines[1], &head_dir, &head_dir.join("state")),
        dir.path().join("scheduler.log"),
    );
    // "Copy ladle-cluster/agent.cluster to every agent machine", and the driver's file.
    fs::copy(
        head_dir.join("ladle-cluster/agent.cluster"),
        node_dir.join("agent.cluster"),
    )
    .expect("copy agent.cluster");
    fs::copy(
        head_dir.join("ladle-cluster/driver.cluster"),
        user_dir.join("driver.cluster"),
    )
    .expect("copy driver.cluster");
    let agent = Process::spawn(
        as_written(node, &lines[2], &node_dir, &node_dir.join("state")),
        dir.path().join("agent.log"),
    );
    wait_for("the agent to join", Duration::from_secs(30), || {
        agent.output().contains("joined cluster").then_some(())
    });
    assert!(
        agent
            .output()
            .contains(&format!("at https://{}:7070", head.ip)),
        "{}",
        agent.output()
    );

    // The user's program runs on the cluster.
    let out = as_written(user, &lines[3], &user_dir, &user_dir.join("state"))
        .output()
        .expect("the driver runs");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(last_json(&String::from_utf8_lossy(&out.stdout))["ok"], 999);

    // What the scheduler's machine sees: TLS and credentials per role.
    let status = head
        .command(&bin("ladle-scheduler"))
        .args(["status", "--json"])
        .current_dir(&head_dir)
        .env("LADLE_CLUSTER_FILE", "ladle-cluster/scheduler.cluster")
        .output()
        .expect("the CLI runs");
    let status: Value = serde_json::from_slice(&status.stdout).expect("status --json");
    assert_eq!(status["security"], "TLS, credentials per role", "{status}");
    assert_eq!(status["agents"]["alive"], 1, "{status}");

    // From the user's machine, without the file: nothing in the clear, nothing without a
    // credential.
    let plain = user
        .command(&bin("ladle-scheduler"))
        .args(["status", "--scheduler", "http://head:7070"])
        .output()
        .expect("the CLI runs");
    refused(&plain, "requires TLS");
    let stranger = user
        .command(&test_driver())
        .arg("panic")
        .env("LADLE_SCHEDULER", "head:7070")
        .output()
        .expect("the driver runs");
    assert!(!stranger.status.success());
    drop((agent, scheduler));
}

#[test]
fn an_operators_own_certificate_serves_with_a_shared_token_or_inside_cluster_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    // "Your own" certificate, key and CA: any PEM files will do; these come from another init.
    let made = init_cluster(&dir.path().join("made"), "default", None);
    let made = ladle_common::cluster_file::ClusterFile::load(&made.join("scheduler.cluster"))
        .expect("the scheduler's file loads");
    let pem = |name: &str, text: Option<&String>| {
        let path = dir.path().join(name);
        fs::write(&path, text.expect("PEM text")).expect("write PEM");
        path
    };
    let cert = pem("cert.pem", made.tls_cert.as_ref());
    let key = pem("key.pem", made.tls_key.as_ref());
    let ca = pem("ca.pem", Some(&made.ca));

    // Settings alone: tls_cert and tls_key, one shared token; clients give tls_ca.
    let (_scheduler, address) = serve_with(dir.path(), |command| {
        command
            .env("LADLE_TLS_CERT", &cert)
            .env("LADLE_TLS_KEY", &key)
            .env("LADLE_TOKEN", "an-operators-token");
    });
    let status = |ca: &Path| {
        clean_command(&bin("ladle-scheduler"))
            .args(["status", "--json", "--scheduler", &address])
            .env("LADLE_TLS_CA", ca)
            .env("LADLE_TLS_SERVER_NAME", "ladle-scheduler")
            .env("LADLE_TOKEN", "an-operators-token")
            .output()
            .expect("the CLI runs")
    };
    let out = status(&ca);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(json["security"], "TLS, one shared token", "{json}");
    // A CA that did not sign it is named in the refusal.
    let other = init_cluster(&dir.path().join("other"), "default", None);
    let other =
        ladle_common::cluster_file::ClusterFile::load(&other.join("view.cluster")).expect("loads");
    let wrong_ca = pem("wrong-ca.pem", Some(&other.ca));
    let out = status(&wrong_ca);
    refused(&out, "wrong-ca.pem");

    // Or the same certificate inside cluster files: init writes them around it.
    let own = dir.path().join("own");
    let mut init = clean_command(&bin("ladle-scheduler"));
    init.args(["init", "--out"])
        .arg(&own)
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("--tls-ca")
        .arg(&ca)
        .args(["--server-name", "ladle-scheduler"]);
    let made = init.output().expect("init runs");
    assert!(made.status.success(), "{}", stderr(&made));
    let run_dir = dir.path().join("own-run");
    fs::create_dir_all(&run_dir).expect("a directory");
    let (_served, address) = serve(&own, &run_dir);
    let out = cli(
        &address,
        Some(&own.join("view.cluster")),
        &["status", "--json"],
    );
    let json: Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(json["security"], "TLS, credentials per role", "{json}");
}

/// An operator's own PKI: a CA, a certificate for the scheduler and one for a client.
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn pki(dir: &Path) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        fs::write(&path, text).expect("write PEM");
        path
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_key = KeyPair::generate().expect("key");
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| {
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("params");
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &issuer).expect("signed");
        (
            write(&format!("{name}.pem"), cert.pem()),
            write(&format!("{name}.key"), key.serialize_pem()),
        )
    };
    let server = leaf("scheduler.example", ExtendedKeyUsagePurpose::ServerAuth);
    let client = leaf("operator.example", ExtendedKeyUsagePurpose::ClientAuth);
    Pki {
        ca: write("ca.pem", ca_cert.pem()),
        server,
        client,
    }
}

#[test]
fn with_mutual_tls_a_client_without_a_certificate_of_the_ca_is_turned_away() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = pki(dir.path());
    let (_scheduler, address) = serve_with(dir.path(), |command| {
        command
            .env("LADLE_TLS_CERT", &pki.server.0)
            .env("LADLE_TLS_KEY", &pki.server.1)
            .env("LADLE_TLS_CLIENT_CA", &pki.ca)
            .env("LADLE_TOKEN", "mtls-token");
    });
    let status = |client: Option<&(PathBuf, PathBuf)>| {
        let mut command = clean_command(&bin("ladle-scheduler"));
        command
            .args(["status", "--json", "--scheduler", &address])
            .env("LADLE_TLS_CA", &pki.ca)
            .env("LADLE_TLS_SERVER_NAME", "scheduler.example")
            .env("LADLE_TOKEN", "mtls-token");
        if let Some((cert, key)) = client {
            command
                .env("LADLE_TLS_CLIENT_CERT", cert)
                .env("LADLE_TLS_CLIENT_KEY", key);
        }
        command.output().expect("the CLI runs")
    };
    let out = status(Some(&pki.client));
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(json["security"], "TLS, one shared token", "{json}");
    // The right token over TLS, but no client certificate: the handshake fails.
    let out = status(None);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // An agent and a driver present theirs too.
    let state = dir.path().join("agent");
    let mut command = clean_command(&bin("ladle-agent"));
    command
        .args(["--hostname", "mtls", "--cpu-slots", "1", "--no-multicast"])
        .args(["--scheduler", &address])
        .arg("--state-dir")
        .arg(&state)
        .env("LADLE_TLS_CA", &pki.ca)
        .env("LADLE_TLS_SERVER_NAME", "scheduler.example")
        .env("LADLE_TLS_CLIENT_CERT", &pki.client.0)
        .env("LADLE_TLS_CLIENT_KEY", &pki.client.1)
        .env("LADLE_TOKEN", "mtls-token");
    let agent = Process::spawn(command, dir.path().join("agent.log"));
    wait_for("the agent to join", Duration::from_secs(30), || {
        agent.output().contains("joined cluster").then_some(())
    });
    let out = clean_command(&test_driver())
        .arg("panic")
        .env("LADLE_SCHEDULER", &address)
        .env("LADLE_TLS_CA", &pki.ca)
        .env("LADLE_TLS_SERVER_NAME", "scheduler.example")
        .env("LADLE_TLS_CLIENT_CERT", &pki.client.0)
        .env("LADLE_TLS_CLIENT_KEY", &pki.client.1)
        .env("LADLE_TOKEN", "mtls-token")
        .env("RUST_LOG", "warn")
        .output()
        .expect("the driver runs");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(last_json(&String::from_utf8_lossy(&out.stdout))["ok"], 999);
}

#[test]
fn a_scheduler_refuses_to_listen_beyond_loopback_without_tls_and_credentials() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (token, says) in [
        (None, "without credentials"),
        (Some("only-a-token"), "without TLS"),
    ] {
        let mut command = clean_command(&bin("ladle-scheduler"));
        command
            .args([
                "serve",
                "--bind",
                "0.0.0.0",
                "--port",
                "0",
                "--no-multicast",
            ])
            .arg("--state-dir")
            .arg(dir.path().join("state"));
        if let Some(token) = token {
            command.env("LADLE_TOKEN", token);
        }
        let out = command.output().expect("the scheduler runs");
        refused(&out, says);
        assert!(
            stderr(&out).contains("ladle-scheduler init"),
            "{}",
            stderr(&out)
        );
    }
}
