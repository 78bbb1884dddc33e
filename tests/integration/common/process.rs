//! The gateway as a separate OS process (the real binary), for tests that
//! need several gateways sharing Redis, or a gateway that is killed.

use std::io::Write;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct GatewayProcess {
    pub base: String,
    child: Child,
    _config: tempfile::NamedTempFile,
    _adapters: tempfile::TempDir,
    /// The gateway's stderr, when the test reads it.
    log: Option<tempfile::NamedTempFile>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl GatewayProcess {
    /// Starts `loragate serve` with the test config plus `extra` sections and
    /// waits until `/ready` answers.
    pub fn spawn(extra: &str) -> GatewayProcess {
        GatewayProcess::spawn_config(&super::config_text(extra))
    }

    /// Starts `loragate serve` with this whole configuration.
    pub fn spawn_config(text: &str) -> GatewayProcess {
        GatewayProcess::start(text, &[], false)
    }

    /// Like [`GatewayProcess::spawn_config`], with more environment
    /// variables, and its log (warnings and up) kept for [`GatewayProcess::log`].
    pub fn spawn_logged(text: &str, environment: &[(&str, &str)]) -> GatewayProcess {
        GatewayProcess::start(text, environment, true)
    }

    /// What the gateway has logged so far (with [`GatewayProcess::spawn_logged`]).
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|file| std::fs::read_to_string(file.path()).ok())
            .unwrap_or_default()
    }

    fn start(text: &str, environment: &[(&str, &str)], logged: bool) -> GatewayProcess {
        let mut config = tempfile::NamedTempFile::new().expect("config file");
        config.write_all(text.as_bytes()).expect("write config");
        let port = free_port();
        let adapters = tempfile::tempdir().expect("adapter store");
        let log = logged.then(|| tempfile::NamedTempFile::new().expect("log file"));
        let stderr = match &log {
            Some(file) => Stdio::from(file.reopen().expect("log file reopens")),
            None => Stdio::inherit(),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_loragate"))
            .args(["serve", "--config"])
            .arg(config.path())
            .env("LORAGATE__SERVER__BIND", format!("127.0.0.1:{port}"))
            .env("LORAGATE__ADAPTERS__DIR", adapters.path())
            // Outage tests provoke warnings on purpose; keep the test log readable.
            .env("RUST_LOG", if logged { "warn" } else { "error" })
            .envs(environment.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("gateway starts");
        let gateway = GatewayProcess {
            base: format!("http://127.0.0.1:{port}"),
            child,
            _config: config,
            _adapters: adapters,
            log,
        };
        gateway.wait_ready();
        gateway
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let address = self.base.trim_start_matches("http://").to_string();
        while Instant::now() < deadline {
            if ready(&address) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gateway at {} never became ready", self.base);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGKILL: no shutdown path runs, as in a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private redis-server on its own port, for tests that stop Redis.
pub struct RedisProcess {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisProcess {
    pub fn start() -> RedisProcess {
        let mut redis = RedisProcess {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("dir"),
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--port",
            ])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts (install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on {} did not start", self.port);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A plain blocking `GET /ready` (usable from inside an async test).
fn ready(address: &str) -> bool {
    answers_ok(address, "/ready")
}

fn answers_ok(address: &str, path: &str) -> bool {
    use std::io::Read;
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

/// `mock-upstream`, a stand-in OpenAI-compatible replica, as its own process.
pub struct MockUpstream {
    pub port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl MockUpstream {
    /// Starts a replica that names itself `name` in its answers; `args` are
    /// further `mock-upstream` options.
    pub fn start(name: &str, args: &[&str]) -> MockUpstream {
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.extend(["--name".into(), name.into()]);
        let mut mock = MockUpstream {
            port: free_port(),
            args,
            child: None,
        };
        mock.restart();
        mock
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new(env!("CARGO_BIN_EXE_mock-upstream"))
            .arg("--bind")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(&self.args)
            .stdout(Stdio::null())
            .spawn()
            .expect("mock-upstream starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if answers_ok(&format!("127.0.0.1:{}", self.port), "/health") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("mock-upstream on {} did not start", self.port);
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.kill();
    }
}
