//! Three `ferry serve` instances on one s3s-fs bucket and one Redis bus, behind nginx as a
//! round-robin load balancer (no sticky sessions, WebSocket upgrades proxied), all on loopback.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TestServer;
use super::redis::RedisServer;
use super::s3::S3Server;

pub struct Nginx {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn nginx_binary() -> String {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("nginx")
        .to_owned()
}

impl Nginx {
    /// nginx on `port`, spreading requests over `upstreams` (http://HOST:PORT) in turn.
    pub fn start(port: u16, upstreams: &[&str]) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let servers: String =
            upstreams.iter().map(|u| format!("    server {};\n", u.trim_start_matches("http://"))).collect();
        let conf = format!(
            r#"worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  upstream ferry {{
{servers}  }}
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    location / {{
      proxy_pass http://ferry;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_read_timeout 3600s;
      proxy_next_upstream error timeout;
    }}
  }}
}}
"#
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .spawn()
            .expect("nginx is installed (the README's test command installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { child, url: format!("http://127.0.0.1:{port}"), _dir: dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Cluster {
    pub instances: Vec<TestServer>,
    pub nginx: Nginx,
    pub redis: RedisServer,
    pub s3: S3Server,
}

impl Cluster {
    /// Three instances; `extra` arguments go to each.
    pub fn start(extra: &[&str]) -> Cluster {
        let s3 = S3Server::s3s_fs();
        let redis = RedisServer::start();
        let port = free_port();
        let public = format!("http://127.0.0.1:{port}");
        let bus = redis.url();
        let mut args = vec!["--bus", bus.as_str(), "--public-url", public.as_str()];
        args.extend_from_slice(extra);
        let instances: Vec<TestServer> = (0..3).map(|_| TestServer::start_s3(&s3.endpoint, "cluster", &args)).collect();
        let upstreams: Vec<&str> = instances.iter().map(|i| i.url.as_str()).collect();
        let nginx = Nginx::start(port, &upstreams);
        Cluster { instances, nginx, redis, s3 }
    }

    /// The URL clients use: the load balancer's.
    pub fn url(&self) -> &str {
        &self.nginx.url
    }

    /// Each instance's count of `name` (a counter of its /metrics).
    pub async fn per_instance(&self, name: &str) -> Vec<f64> {
        let mut out = Vec::new();
        for i in &self.instances {
            out.push(i.metric(name).await);
        }
        out
    }
}
