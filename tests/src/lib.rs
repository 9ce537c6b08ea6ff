//! A harness for end-to-end tests: it starts the real `ladle-scheduler` and `ladle-agent`
//! binaries on loopback with ports picked at run time, talks to them through the real CLI, and
//! kills them with real signals. Nothing here stands in for a component of Ladle.

pub mod browser;
pub mod netns;

use std::{
    fmt::Debug,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde_json::Value;
use tempfile::TempDir;

/// The workspace's binaries, built once per test process so they are never stale.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // target/<profile>/deps/<test binary>
        let exe = std::env::current_exe().expect("the test binary knows its path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary lives in target/<profile>/deps")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args([
            "build",
            "--bins",
            "-p",
            "ladle-scheduler",
            "-p",
            "ladle-agent",
        ]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building the binaries failed");
        profile_dir
    });
    dir.join(name)
}

/// An example of the SDK (sdk/examples), built with the binaries.
pub fn example(name: &str) -> PathBuf {
    bin("examples").join(name)
}

/// The port of the scheduler that writes its address to `address_file`, once it has (20 s at
/// most).
pub fn listening_port(address_file: &Path) -> u16 {
    wait_for("the scheduler to listen", Duration::from_secs(20), || {
        fs::read_to_string(address_file)
            .ok()?
            .trim()
            .rsplit(':')
            .next()?
            .parse()
            .ok()
    })
}

/// Waits for `probe` to return `Some` within `within`, polling; panics naming `what` otherwise.
pub fn wait_for<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `command` to its end and returns its stdout, failing the test (showing both outputs) if
/// it failed.
pub fn stdout_of(command: &mut Command) -> String {
    let out = command.output().expect("the program runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{command:?} failed: {}\nstdout: {stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A child process that is killed when the test lets go of it.
pub struct Process {
    child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(mut command: Command, log: PathBuf) -> Self {
        let file = fs::File::create(&log).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("the binary starts");
        Self { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }

    /// The exit status, if it has ended.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        wait_for("the process to exit", within, || {
            self.child.try_wait().ok().flatten()
        })
    }

    pub fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Process {
    /// Kills it if it still runs; never fails.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A command with none of the caller's LADLE_* variables, so tests do not see the developer's.
pub fn clean_command(program: &Path) -> Command {
    let mut command = Command::new(program);
    for (key, _) in std::env::vars() {
        if key.starts_with("LADLE_") {
            command.env_remove(key);
        }
    }
    command.env("RUST_LOG", "info");
    command
}

/// Runs `ladle-scheduler init` into `dir` (cluster `cluster`, scheduler address `scheduler` if
/// given): the five cluster files, as an operator makes them.
pub fn init_cluster(dir: &Path, cluster: &str, scheduler: Option<&str>) -> PathBuf {
    let mut command = clean_command(&bin("ladle-scheduler"));
    command
        .args(["init", "--cluster", cluster, "--out"])
        .arg(dir);
    if let Some(address) = scheduler {
        command.args(["--scheduler", address]);
    }
    stdout_of(&mut command);
    dir.to_owned()
}

/// How a test scheduler is set up.
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    pub token: Option<String>,
    pub heartbeat_interval: &'static str,
    pub heartbeat_timeout: &'static str,
    /// More lines for the settings file.
    pub extra: &'static str,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            token: None,
            heartbeat_interval: "250ms",
            heartbeat_timeout: "2s",
            extra: "",
        }
    }
}

pub struct Scheduler {
    pub process: Process,
    pub address: String,
    pub options: SchedulerOptions,
    dir: TempDir,
    starts: u32,
}

impl Scheduler {
    pub fn start(options: SchedulerOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut scheduler = Self {
            process: Self::launch(dir.path(), &options, 0, 0),
            address: String::new(),
            options,
            dir,
            starts: 1,
        };
        scheduler.address = scheduler.read_address();
        scheduler
    }

    fn launch(dir: &Path, options: &SchedulerOptions, port: u16, n: u32) -> Process {
        let settings = dir.join("scheduler.toml");
        let address_file = dir.join("address");
        let _ = fs::remove_file(&address_file);
        fs::write(
            &settings,
            format!(
                "bind = \"127.0.0.1\"\nport = {port}\nhttp_port = 0\naddress_file = {address_file:?}\n\
                 heartbeat_interval = {:?}\nheartbeat_timeout = {:?}\nstate_dir = {:?}\n{}\n",
                options.heartbeat_interval,
                options.heartbeat_timeout,
                dir.join("state"),
                options.extra
            ),
        )
        .expect("settings file");
        let mut command = clean_command(&bin("ladle-scheduler"));
        command.arg("--config").arg(&settings).arg("serve");
        if let Some(token) = &options.token {
            command.env("LADLE_TOKEN", token);
        }
        Process::spawn(command, dir.join(format!("scheduler-{n}.log")))
    }

    fn read_address(&self) -> String {
        let file = self.dir.path().join("address");
        wait_for(
            "the scheduler to write its address",
            Duration::from_secs(20),
            || {
                fs::read_to_string(&file)
                    .ok()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
            },
        )
    }

    pub fn port(&self) -> u16 {
        self.address
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the address ends in a port")
    }

    /// Kills the scheduler with SIGKILL and starts a new one on the same port.
    pub fn restart(&mut self) {
        self.process.kill9();
        let port = self.port();
        self.process = Self::launch(self.dir.path(), &self.options, port, self.starts);
        self.starts += 1;
        let address = self.read_address();
        assert_eq!(
            address, self.address,
            "the restarted scheduler listens where the first did"
        );
    }

    /// Runs the management CLI against this scheduler with the given token.
    pub fn cli_with_token(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut command = clean_command(&bin("ladle-scheduler"));
        command.args(args).env("LADLE_SCHEDULER", &self.address);
        if let Some(token) = token {
            command.env("LADLE_TOKEN", token);
        }
        command.output().expect("the CLI runs")
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_token(self.options.token.as_deref(), args)
    }

    /// `agents --json`, parsed.
    pub fn agents(&self) -> Vec<Value> {
        let out = self.cli(&["agents", "--json"]);
        assert!(
            out.status.success(),
            "agents --json failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        match serde_json::from_slice(&out.stdout) {
            Ok(Value::Array(agents)) => agents,
            other => panic!("agents --json printed {other:?}"),
        }
    }

    /// `agents --json`, or None while the scheduler does not answer (during a restart).
    pub fn try_agents(&self) -> Option<Vec<Value>> {
        let out = self.cli(&["agents", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice::<Vec<Value>>(&out.stdout).ok()
    }

    /// Waits until the agent with `id` is listed in `state`; returns its row.
    pub fn wait_state(&self, id: &str, state: &str, within: Duration) -> Value {
        wait_for(&format!("agent {id} to be {state}"), within, || {
            self.try_agents()?
                .into_iter()
                .find(|a| a["id"] == id && a["state"] == state)
        })
    }

    pub fn log(&self) -> String {
        self.process.output()
    }

    /// `status --json`, parsed.
    pub fn status(&self) -> Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status --json failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
    }

    /// A driver program run against this scheduler (LADLE_SCHEDULER and the token set).
    pub fn driver(&self, program: &Path, args: &[&str]) -> Command {
        let mut command = clean_command(program);
        command
            .args(args)
            .env("LADLE_SCHEDULER", &self.address)
            .env("RUST_LOG", "warn");
        if let Some(token) = &self.options.token {
            command.env("LADLE_TOKEN", token);
        }
        command
    }

    /// Runs a driver to the end; returns its stdout, failing the test if it failed.
    pub fn run_driver(&self, program: &Path, args: &[&str]) -> String {
        stdout_of(&mut self.driver(program, args))
    }

    /// Starts a driver in the background, its output going to a log file.
    pub fn spawn_driver(&self, program: &Path, args: &[&str]) -> Process {
        let log = self
            .dir
            .path()
            .join(format!("driver-{}.log", args.join("-").replace('/', "_")));
        Process::spawn(self.driver(program, args), log)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

pub struct Agent {
    pub process: Process,
    pub state_dir: PathBuf,
}

impl Agent {
    /// Starts an agent joining `scheduler`, presenting `token`.
    pub fn start(scheduler: &Scheduler, token: Option<&str>, extra: &[&str]) -> Self {
        let state_dir = tempfile::tempdir().expect("temp dir").keep();
        Self::start_in(scheduler, token, state_dir, extra)
    }

    /// Starts an agent given only `extra` (no `--scheduler`): it finds the scheduler its own way.
    pub fn start_without_address(scheduler: &Scheduler, extra: &[&str]) -> Self {
        let state_dir = tempfile::tempdir().expect("temp dir").keep();
        let mut command = clean_command(&bin("ladle-agent"));
        command.arg("--state-dir").arg(&state_dir).args(extra);
        if let Some(token) = &scheduler.options.token {
            command.env("LADLE_TOKEN", token);
        }
        let log = state_dir.join("agent.log");
        Self {
            process: Process::spawn(command, log),
            state_dir,
        }
    }

    pub fn start_in(
        scheduler: &Scheduler,
        token: Option<&str>,
        state_dir: PathBuf,
        extra: &[&str],
    ) -> Self {
        Self::start_with_env(scheduler, token, state_dir, extra, &[])
    }

    /// As [`Agent::start_in`], with `env` added to the agent's environment.
    pub fn start_with_env(
        scheduler: &Scheduler,
        token: Option<&str>,
        state_dir: PathBuf,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = clean_command(&bin("ladle-agent"));
        command
            .arg("--scheduler")
            .arg(&scheduler.address)
            .arg("--state-dir")
            .arg(&state_dir)
            .args(extra)
            .envs(env.iter().copied());
        if let Some(token) = token {
            command.env("LADLE_TOKEN", token);
        }
        let log = state_dir.join("agent.log");
        Self {
            process: Process::spawn(command, log),
            state_dir,
        }
    }

    /// The id the agent keeps in its state directory (written before it joins).
    pub fn id(&self) -> String {
        let file = self.state_dir.join("agent-id");
        wait_for("the agent to write its id", Duration::from_secs(20), || {
            fs::read_to_string(&file)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.process.stop();
        let _ = fs::remove_dir_all(&self.state_dir);
    }
}

/// Starts `n` agents of two CPU slots each, named `agent-0`, `agent-1`, …, joining `scheduler`
/// with its token, and waits until each is alive.
pub fn two_slot_agents(scheduler: &Scheduler, n: usize) -> Vec<Agent> {
    let agents: Vec<Agent> = (0..n)
        .map(|i| {
            Agent::start(
                scheduler,
                scheduler.options.token.as_deref(),
                &["--cpu-slots", "2", "--hostname", &format!("agent-{i}")],
            )
        })
        .collect();
    for agent in &agents {
        scheduler.wait_state(&agent.id(), "alive", Duration::from_secs(20));
    }
    agents
}

/// The scheduling policy (a `SCHED_*` number: 0 normal, 3 batch) in a `/proc/.../stat` file.
pub fn sched_policy(stat: &Path) -> Option<u32> {
    let text = fs::read_to_string(stat).ok()?;
    // Field 41; the command name (field 2) may hold spaces, so count from where it ends.
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().nth(38)?.parse().ok()
}

/// Prints a value on failure: handy in assertions over JSON rows.
pub fn show(value: &impl Debug) -> String {
    format!("{value:#?}")
}

/// The last line of `text` that parses as a JSON object.
pub fn last_json(text: &str) -> Value {
    text.lines()
        .rev()
        .find_map(|line| {
            serde_json::from_str::<Value>(line)
                .ok()
                .filter(Value::is_object)
        })
        .unwrap_or_else(|| panic!("no JSON line in {text:?}"))
}

/// The test driver program (tests/src/bin/ladle-test-driver.rs).
pub fn test_driver() -> PathBuf {
    bin("ladle-test-driver")
}
