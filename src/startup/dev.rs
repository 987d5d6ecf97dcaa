//! The local stack for a new user (`azaion-loader dev`): the loader, the
//! Resource API emulator and an embedded S3 server, all on 127.0.0.1, with a
//! demo user and a demo resource, plus ready-to-paste curl lines.
//! For trying things out only: the emulator keeps its users in memory and
//! the demo credentials are public.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::Application;
use super::compose::real_ports;
use super::config::{Config, RuntimeKind};
use crate::adapters::devstack::emulator::{self, EmulatorConfig, EmulatorHandle};
use crate::adapters::devstack::s3_server::{self, S3ServerConfig, S3ServerHandle};
use crate::adapters::outbound::s3::S3Connector;
use crate::domain::cdn::{CdnConfig, S3Keys};
use crate::domain::cipher::encrypt;
use crate::domain::keys::{AesKey, resource_key};
use crate::domain::names::Folder;
use crate::domain::split::split;
use crate::ports::ObjectStoreConnector;

pub const DEMO_EMAIL: &str = "demo@azaion.local";
pub const DEMO_PASSWORD: &str = "demo-password";
pub const DEMO_FOLDER: &str = "models";
pub const DEMO_RESOURCE: &str = "demo.txt";
pub const DEMO_FRAGMENT: &[u8] = b"dev-key-fragment";

pub struct DevOptions {
    pub listen: SocketAddr,
    /// Where the cache, the S3 data and the image archive live; a temporary folder if `None`.
    pub data_dir: Option<PathBuf>,
    pub docker_host: Option<String>,
    pub images: Vec<String>,
    /// An S3 server to use instead of the embedded one (moto, MinIO): it must accept the
    /// demo keys; the bucket is created there.
    pub s3_endpoint: Option<String>,
}

/// The stack's S3 server: its own, or one given by URL.
pub enum DevS3 {
    Embedded(S3ServerHandle),
    External(String),
}

impl DevS3 {
    fn label_and_url(&self) -> (&'static str, String) {
        match self {
            Self::Embedded(s3) => ("S3 (s3s-fs)", s3.endpoint()),
            Self::External(url) => ("S3 (external)", url.clone()),
        }
    }
}

/// The peers of a running stack; dropping it stops them.
pub struct DevPeers {
    pub emulator: EmulatorHandle,
    pub s3: S3ServerHandle,
    pub cdn: CdnConfig,
    _temp: Option<tempfile::TempDir>,
}

fn io_err(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Starts the emulator and the embedded S3 server with the demo data in `data_dir`.
pub async fn start_peers(
    data_dir: &Path,
) -> Result<(EmulatorHandle, S3ServerHandle, CdnConfig), String> {
    match start_peers_with(data_dir, None).await? {
        (emulator, DevS3::Embedded(s3), cdn) => Ok((emulator, s3, cdn)),
        (_, DevS3::External(_), _) => Err("no embedded S3 server".into()),
    }
}

/// Starts the emulator, and the embedded S3 server unless `s3_endpoint` names one to
/// use instead, with the demo data in `data_dir`.
pub async fn start_peers_with(
    data_dir: &Path,
    s3_endpoint: Option<&str>,
) -> Result<(EmulatorHandle, DevS3, CdnConfig), String> {
    let s3 = match s3_endpoint {
        Some(url) => DevS3::External(url.trim_end_matches('/').to_owned()),
        None => {
            let s3_root = data_dir.join("s3");
            std::fs::create_dir_all(&s3_root).map_err(io_err("S3 data folder"))?;
            let s3 = s3_server::start(S3ServerConfig {
                root: s3_root,
                credentials: vec![
                    ("dev-reader".into(), "dev-reader-secret".into()),
                    ("dev-writer".into(), "dev-writer-secret".into()),
                ],
            })
            .await
            .map_err(io_err("S3 server"))?;
            s3.create_bucket(DEMO_FOLDER).map_err(io_err("S3 bucket"))?;
            DevS3::Embedded(s3)
        }
    };
    let cdn = CdnConfig {
        host: s3.label_and_url().1,
        region: "us-east-1".into(),
        downloader: S3Keys {
            access_key: "dev-reader".into(),
            secret_key: "dev-reader-secret".into(),
        },
        uploader: S3Keys {
            access_key: "dev-writer".into(),
            secret_key: "dev-writer-secret".into(),
        },
    };
    let emulator = emulator::start(EmulatorConfig {
        cdn: Some(cdn.clone()),
        key_fragment: DEMO_FRAGMENT.to_vec(),
        ..EmulatorConfig::default()
    })
    .await
    .map_err(io_err("Resource API emulator"))?;
    if let DevS3::External(_) = s3 {
        crate::adapters::outbound::s3::ensure_bucket(&cdn, DEMO_FOLDER).await?;
    }
    emulator.add_user(DEMO_EMAIL, DEMO_PASSWORD);
    seed_resource(
        &emulator,
        &cdn,
        DEMO_FOLDER,
        DEMO_RESOURCE,
        demo_text().into(),
    )
    .await?;
    Ok((emulator, s3, cdn))
}

fn demo_text() -> Vec<u8> {
    b"Hello from Azaion Loader: this text was split, encrypted, stored at the emulated API and S3, and decrypted for you.\n"
        .to_vec()
}

/// Stores a resource as an upload would: small part at the API, big part in S3.
pub async fn seed_resource(
    emulator: &EmulatorHandle,
    cdn: &CdnConfig,
    folder: &str,
    name: &str,
    plaintext: Bytes,
) -> Result<(), String> {
    let mut iv = [0u8; 16];
    getrandom::fill(&mut iv).map_err(|e| e.to_string())?;
    let encrypted = encrypt(&AesKey::from_key_string(&resource_key()), iv, &plaintext);
    let (small, big) = split(&encrypted);
    emulator.put_file(
        Some(folder),
        &format!("{name}.small"),
        Bytes::copy_from_slice(small),
    );
    let store = S3Connector::default()
        .connect(cdn)
        .map_err(|e| e.to_string())?;
    let folder = Folder::parse(folder).map_err(|e| e.to_string())?;
    let body = Bytes::copy_from_slice(big);
    store
        .put(
            &folder,
            &format!("{name}.big"),
            Box::pin(futures::stream::iter([Ok(body)])),
        )
        .await
        .map_err(|e| format!("seeding S3: {e}"))
}

/// Runs the whole stack until `shutdown` completes.
pub async fn run(
    options: DevOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let temp = match &options.data_dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().map_err(io_err("temporary folder"))?),
    };
    let data_dir = match (&options.data_dir, &temp) {
        (Some(d), _) => d.clone(),
        (None, Some(t)) => t.path().to_path_buf(),
        (None, None) => return Err("no data folder".into()),
    };
    std::fs::create_dir_all(&data_dir).map_err(io_err("data folder"))?;
    let (emulator, s3, _cdn) = start_peers_with(&data_dir, options.s3_endpoint.as_deref()).await?;

    let mut config = Config::defaults();
    config.listen = options.listen.into();
    config.resource_api_url = emulator.base_url();
    config.model_cache_dir = super::config::absolute(data_dir.join("cache"));
    config.images_path = data_dir.join("images.enc");
    config.expected_images = options.images;
    config.docker_host = options.docker_host;
    config.runtime = RuntimeKind::Bollard;
    let ports = real_ports(&config)?;
    let app = Application::build(&config, ports)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = app.local_addr().map_err(io_err("listener"))?;
    print_banner(addr, &emulator, &s3, &data_dir, &config);
    let served = app.serve(shutdown).await.map_err(io_err("serving"));
    drop((emulator, s3, temp));
    served
}

fn print_banner(
    addr: SocketAddr,
    emulator: &EmulatorHandle,
    s3: &DevS3,
    data_dir: &Path,
    config: &Config,
) {
    let (s3_label, s3_url) = s3.label_and_url();
    let base = format!("http://{addr}");
    println!(
        "Azaion Loader local stack is up (everything on 127.0.0.1, data in {}):",
        data_dir.display()
    );
    println!("  loader               {base}");
    println!("  Resource API (emul.) {}", emulator.base_url());
    println!("  {s3_label:<20} {s3_url}");
    println!("  demo user            {DEMO_EMAIL} / {DEMO_PASSWORD}");
    println!();
    println!("Try it (paste into another shell):");
    println!("  curl -s {base}/health");
    println!("  curl -s {base}/status");
    println!(
        "  curl -s -X POST {base}/login -H 'content-type: application/json' -d '{{\"email\":\"{DEMO_EMAIL}\",\"password\":\"{DEMO_PASSWORD}\"}}'"
    );
    println!(
        "  curl -s -X POST {base}/load/{DEMO_RESOURCE} -H 'content-type: application/json' -d '{{\"filename\":\"{DEMO_RESOURCE}\",\"folder\":\"{DEMO_FOLDER}\"}}'"
    );
    println!("  echo 'my model bytes' > /tmp/my-model.bin");
    println!(
        "  curl -s -X POST {base}/upload/my-model.bin -F folder={DEMO_FOLDER} -F data=@/tmp/my-model.bin"
    );
    println!(
        "  curl -s -X POST {base}/load/my-model.bin -H 'content-type: application/json' -d '{{\"folder\":\"{DEMO_FOLDER}\"}}'"
    );
    println!(
        "  curl -s -X POST {base}/unlock -H 'content-type: application/json' -d '{{\"email\":\"{DEMO_EMAIL}\",\"password\":\"{DEMO_PASSWORD}\"}}'"
    );
    println!("  curl -s {base}/unlock/status");
    println!(
        "(unlock answers 404 until an archive exists at {}: make one with `azaion-loader pack-images` and the fragment {:?})",
        config.images_path.display(),
        String::from_utf8_lossy(DEMO_FRAGMENT)
    );
    println!("Stop with Ctrl-C.");
}

/// Keeps the peers of a stack alive for tests.
pub async fn peers_in(data_dir: &Path) -> Result<Arc<DevPeers>, String> {
    let (emulator, s3, cdn) = start_peers(data_dir).await?;
    Ok(Arc::new(DevPeers {
        emulator,
        s3,
        cdn,
        _temp: None,
    }))
}
