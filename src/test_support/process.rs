//! [`LoaderProcess`]: the real `azaion-loader serve` binary as a child
//! process, talking to real peers; killed on drop.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::json;

use super::clean_command;
use crate::startup::dev::{DEMO_EMAIL, DEMO_PASSWORD};

/// The loader binary running against the dev peers; killed on drop.
pub struct LoaderProcess {
    pub child: Child,
    pub base: String,
    pub client: reqwest::Client,
}

impl Drop for LoaderProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LoaderProcess {
    /// Starts `bin serve` (with none of the caller's loader settings) against
    /// the Resource API at `api_url`, its cache and archive under `data`,
    /// and waits until it prints its address.
    pub fn spawn(bin: &Path, api_url: &str, data: &Path, extra_env: &[(&str, &str)]) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut cmd = clean_command(bin);
        cmd.arg("serve")
            .env("LOADER_LISTEN", "127.0.0.1:0")
            .env("RESOURCE_API_URL", api_url)
            .env("MODEL_CACHE_DIR", data.join("cache"))
            .env("IMAGES_PATH", data.join("images.enc"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("loader starts");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("loader printed its address")
                .expect("stderr line");
            if let Some(at) = line.find("listening on http://") {
                break line[at + "listening on ".len()..].trim().to_owned();
            }
        };
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Self {
            child,
            base,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(600))
                .build()
                .unwrap(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn login(&self) {
        let r = self
            .client
            .post(self.url("/login"))
            .json(&json!({"email": DEMO_EMAIL, "password": DEMO_PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    /// `GET /unlock/status` as JSON.
    pub async fn unlock_status(&self) -> serde_json::Value {
        self.client
            .get(self.url("/unlock/status"))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("JSON")
    }

    /// `POST /load/{name}` of `folder`.
    pub async fn load(&self, folder: &str, name: &str) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/load/{name}")))
            .json(&json!({"folder": folder}))
            .send()
            .await
            .expect("request")
    }

    /// Peak resident memory of the loader process (VmHWM), in KiB. A test
    /// that cannot read it fails: a bound it cannot check is no bound.
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
    }
}
