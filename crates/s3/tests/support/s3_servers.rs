//! Real S3-compatible servers for tests: `s3s-fs` (checks SigV4 signatures) and moto's server,
//! each a child process on a loopback port, stopped when dropped. `scripts/test` installs both.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_s3::{S3Config, S3Credentials, S3Store};

pub const ACCESS_KEY: &str = "ferrytestkey";
pub const SECRET_KEY: &str = "ferry-test-secret-key-0123456789";
pub const BUCKET: &str = "ferry-test";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    S3sFs,
    Moto,
}

pub struct S3Server {
    pub kind: Kind,
    pub endpoint: String,
    child: Child,
    /// s3s-fs's root: the bucket is the folder `BUCKET` in it.
    pub root: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

fn wait_for(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before it listened: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on 127.0.0.1:{port} within 60 s");
}

impl S3Server {
    pub fn start(kind: Kind) -> S3Server {
        match kind {
            Kind::S3sFs => S3Server::s3s_fs(),
            Kind::Moto => S3Server::moto(),
        }
    }

    /// `s3s-fs` with an access key, so every request's signature is checked.
    pub fn s3s_fs() -> S3Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join(BUCKET)).expect("bucket dir");
        let port = free_port();
        let mut child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", ACCESS_KEY])
            .args(["--secret-key", SECRET_KEY])
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start s3s-fs ({e}); scripts/test installs it"));
        wait_for(port, &mut child, "s3s-fs");
        S3Server { kind: Kind::S3sFs, endpoint: format!("http://127.0.0.1:{port}"), child, root: Some(root), _dir: dir }
    }

    /// moto's S3 server, with the bucket created.
    pub fn moto() -> S3Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start moto_server ({e}); scripts/test installs it"));
        wait_for(port, &mut child, "moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        let out = Command::new("curl")
            .args(["-sf", "-X", "PUT", &format!("{endpoint}/{BUCKET}")])
            .output()
            .expect("curl creates the bucket");
        assert!(out.status.success(), "creating the moto bucket failed: {out:?}");
        S3Server { kind: Kind::Moto, endpoint, child, root: None, _dir: dir }
    }

    pub fn config(&self, prefix: &str) -> S3Config {
        let creds = S3Credentials {
            access_key_id: ACCESS_KEY.to_owned(),
            secret_access_key: SECRET_KEY.to_owned(),
            session_token: None,
        };
        let mut c = S3Config::from_url(&format!("s3://{BUCKET}/{prefix}"), "us-east-1".to_owned(), creds)
            .expect("valid store URL");
        c.endpoint = Some(self.endpoint.clone());
        c.path_style = true;
        c
    }

    pub fn store(&self, prefix: &str) -> S3Store {
        S3Store::new(self.config(prefix)).expect("S3 store")
    }

    /// `s3s-fs` keeps each object as a file; the path of `key` in the bucket.
    pub fn object_file(&self, key: &str) -> Option<PathBuf> {
        self.root.as_deref().map(|r: &Path| r.join(BUCKET).join(key))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
