//! nginx on 127.0.0.1 in a scratch directory of its own: the integration tests' server, and
//! the server `cargo xtask bench` loads.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{children_of, free_port, HarnessError, Peer};

/// How long nginx has to listen and start its worker.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// What an nginx of the harness runs besides what every one has: one worker, in the
/// foreground, no access log, its pid file, error log and temp paths in its scratch directory
/// (nginx's prefix, so relative paths in `http` and `server` are under it too).
#[derive(Debug, Clone)]
pub struct NginxConfig {
    /// The port of its `listen` line; the scratch directory is named after it.
    pub port: u16,
    /// `worker_connections` of the `events` block.
    pub worker_connections: u32,
    /// Further directives of the `http` block.
    pub http: String,
    /// The directives of the one `server` block, `listen` included.
    pub server: String,
}

impl NginxConfig {
    /// The configuration of the tests' nginx: `/api` answers `api`, other paths are files
    /// under `html/` (`/` is `hello`); `listen` and `extra` go into the server block.
    fn for_tests(port: u16, listen: &str, extra: &str) -> NginxConfig {
        NginxConfig {
            port,
            worker_connections: 256,
            http: "keepalive_requests 10000;".into(),
            server: format!(
                "{listen}\n  root html;\n  location /api {{ return 200 \"api\\n\"; }}\n{extra}"
            ),
        }
    }

    fn render(&self) -> String {
        format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\n\
             events {{ worker_connections {wc}; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             {http}\n\
             server {{\n  {server}\n }}\n}}\n",
            d = scratch_dir(self.port).display(),
            wc = self.worker_connections,
            http = self.http,
            server = self.server,
        )
    }
}

/// Where the nginx listening on `port` keeps its files.
fn scratch_dir(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("traceid-nginx-{port}"))
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

/// A running nginx; on drop it is stopped with its workers (SIGTERM to the master, which
/// stops and reaps them) and its scratch directory is removed.
pub struct Nginx {
    master: Peer,
    pub port: u16,
    pub dir: PathBuf,
}

impl Nginx {
    /// The tests' nginx on a free port.
    pub fn start() -> Nginx {
        Self::start_with("")
    }

    /// The tests' nginx with `extra` in its server block.
    pub fn start_with(extra: &str) -> Nginx {
        let port = free_port();
        Self::start_for_tests(port, &format!("listen 127.0.0.1:{port};"), extra)
    }

    /// The tests' nginx speaking HTTP/2 without TLS (h2c, prior knowledge).
    pub fn start_h2c() -> Nginx {
        Self::start_h2c_with("")
    }

    /// [`Nginx::start_h2c`] with `extra` in its server block.
    pub fn start_h2c_with(extra: &str) -> Nginx {
        let port = free_port();
        Self::start_for_tests(port, &format!("listen 127.0.0.1:{port} http2;"), extra)
    }

    /// The tests' nginx serving TLS on its port with a self-signed certificate made for the
    /// test.
    pub fn start_tls() -> Nginx {
        Self::start_tls_listening("ssl")
    }

    /// [`Nginx::start_tls`] with HTTP/2 offered through ALPN.
    pub fn start_tls_h2() -> Nginx {
        Self::start_tls_listening("ssl http2")
    }

    /// `listen_flags` follow the address on the `listen` line.
    fn start_tls_listening(listen_flags: &str) -> Nginx {
        let port = free_port();
        let dir = scratch_dir(port);
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let ok = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .expect("openssl must be installed");
        assert!(ok.success(), "openssl req failed");
        Self::start_for_tests(
            port,
            &format!(
                "listen 127.0.0.1:{port} {listen_flags};\n  ssl_certificate {};\n  ssl_certificate_key {};",
                cert.display(),
                key.display()
            ),
            "",
        )
    }

    fn start_for_tests(port: u16, listen: &str, extra: &str) -> Nginx {
        let html = scratch_dir(port).join("html");
        std::fs::create_dir_all(&html).unwrap();
        std::fs::write(html.join("index.html"), "hello\n").unwrap();
        Self::launch(&NginxConfig::for_tests(port, listen, extra)).unwrap_or_else(|e| {
            panic!(
                "{} (cargo xtask integration-test installs nginx)",
                crate::error_chain(&e)
            )
        })
    }

    /// Starts nginx with `config` and waits until it listens on 127.0.0.1:`config.port` and
    /// its worker is up.
    pub fn launch(config: &NginxConfig) -> Result<Nginx, HarnessError> {
        let dir = scratch_dir(config.port);
        std::fs::create_dir_all(dir.join("logs"))
            .map_err(io_error(format!("creating {}", dir.display())))?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config.render())
            .map_err(io_error(format!("writing {}", conf.display())))?;
        let master = Peer::spawn(
            Command::new("nginx")
                .arg("-c")
                .arg(&conf)
                .arg("-p")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
            libc::SIGTERM,
        )
        .map_err(io_error("starting nginx"))?;
        let mut nginx = Nginx {
            master,
            port: config.port,
            dir,
        };
        nginx
            .master
            .wait_listening("nginx", config.port, START_TIMEOUT)?;
        // The master listens before it forks the worker.
        let deadline = Instant::now() + START_TIMEOUT;
        while nginx.worker_pids().is_empty() {
            if Instant::now() >= deadline {
                return Err(HarnessError::NoWorker {
                    port: config.port,
                    timeout: START_TIMEOUT,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }

    /// The master's pid.
    pub fn pid(&self) -> u32 {
        self.master.id()
    }

    /// nginx's worker pids (children of the master).
    pub fn worker_pids(&self) -> Vec<u32> {
        children_of(self.master.id())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.master.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_keeps_every_path_in_the_scratch_directory() {
        let conf = NginxConfig {
            port: 4242,
            worker_connections: 1024,
            http: "keepalive_timeout 300s;".into(),
            server: "listen 127.0.0.1:4242 backlog=4096;".into(),
        }
        .render();
        let dir = scratch_dir(4242);
        assert!(conf.contains("events { worker_connections 1024; }"));
        assert!(conf.contains("\nkeepalive_timeout 300s;\n"));
        assert!(conf.contains("server {\n  listen 127.0.0.1:4242 backlog=4096;\n }"));
        for directive in [
            "pid",
            "error_log",
            "client_body_temp_path",
            "proxy_temp_path",
        ] {
            let line = conf
                .lines()
                .find(|l| l.trim_start().starts_with(directive))
                .unwrap_or_else(|| panic!("no {directive} in {conf}"));
            assert!(line.contains(&*dir.to_string_lossy()), "{line}");
        }
    }
}
