//! Unlock (F4/F5, PROTOCOL §6): the encrypted image archive streams from
//! disk through decryption straight into the container runtime. No plaintext
//! is written anywhere, memory stays constant, and exactly one run happens at
//! a time, driven by the domain state machine.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Mutex;

use crate::domain::cipher::Decryptor;
use crate::domain::keys::AesKey;
use crate::domain::unlock::{UnlockEvent, UnlockPhase, UnlockState};
use crate::ports::{
    ApiError, ByteStream, Clock, ContainerRuntime, Credentials, ResourceApi, RuntimeError,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnlockStartError {
    #[error("the image archive {0} is missing and the images are not loaded")]
    ArchiveMissing(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnlockProgress {
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub phase_elapsed: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnlockStatus {
    pub phase: UnlockPhase,
    pub error: Option<String>,
    pub progress: UnlockProgress,
}

pub struct UnlockSettings {
    pub images_path: PathBuf,
    pub expected_images: Vec<String>,
    /// A run that has not reached `ready` by then ends in `error` (`UNLOCK_TIMEOUT_SECS`).
    pub timeout: Duration,
}

struct Machine {
    state: UnlockState,
    phase_since: SystemTime,
}

pub struct UnlockService {
    api: Arc<dyn ResourceApi>,
    runtime: Arc<dyn ContainerRuntime>,
    clock: Arc<dyn Clock>,
    settings: UnlockSettings,
    /// Held while deciding whether to start: two unlocks never run at once.
    starting: Mutex<()>,
    machine: StdMutex<Machine>,
    bytes_done: AtomicU64,
    bytes_total: AtomicU64,
}

impl UnlockService {
    pub fn new(
        api: Arc<dyn ResourceApi>,
        runtime: Arc<dyn ContainerRuntime>,
        clock: Arc<dyn Clock>,
        settings: UnlockSettings,
    ) -> Self {
        let now = clock.now();
        Self {
            api,
            runtime,
            clock,
            settings,
            starting: Mutex::new(()),
            machine: StdMutex::new(Machine {
                state: UnlockState::idle(),
                phase_since: now,
            }),
            bytes_done: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
        }
    }

    pub fn status(&self) -> UnlockStatus {
        let m = self.machine.lock().unwrap_or_else(|p| p.into_inner());
        UnlockStatus {
            phase: m.state.phase,
            error: m.state.error.clone(),
            progress: UnlockProgress {
                bytes_done: self.bytes_done.load(Ordering::Relaxed),
                bytes_total: self.bytes_total.load(Ordering::Relaxed),
                phase_elapsed: self
                    .clock
                    .now()
                    .duration_since(m.phase_since)
                    .unwrap_or_default(),
            },
        }
    }

    /// Applies an event; a refused one is a bug in the driver, logged and ignored.
    fn apply(&self, event: UnlockEvent) -> UnlockPhase {
        let mut m = self.machine.lock().unwrap_or_else(|p| p.into_inner());
        match m.state.next(event) {
            Ok(next) => {
                if next.phase != m.state.phase {
                    m.phase_since = self.clock.now();
                    tracing::info!("unlock: {} → {}", m.state.phase, next.phase);
                }
                if let Some(reason) = &next.error {
                    tracing::warn!("unlock failed: {reason}");
                }
                m.state = next;
            }
            Err(refused) => tracing::error!("{refused}"),
        }
        m.state.phase
    }

    /// `POST /unlock`: starts a background run if none is running; answers the phase.
    pub async fn start(
        self: &Arc<Self>,
        credentials: Credentials,
    ) -> Result<UnlockPhase, UnlockStartError> {
        let _one = self.starting.lock().await;
        let current = self.status().phase;
        if !matches!(current, UnlockPhase::Idle | UnlockPhase::Error) {
            return Ok(current);
        }
        let archive_exists = tokio::fs::metadata(&self.settings.images_path)
            .await
            .map(|m| m.is_file())
            .unwrap_or(false);
        if !archive_exists {
            return match self.all_images_present().await {
                Ok(true) => Ok(self.apply(UnlockEvent::FoundImagesWithoutArchive)),
                Ok(false) => Err(UnlockStartError::ArchiveMissing(
                    self.settings.images_path.display().to_string(),
                )),
                Err(e) => {
                    tracing::warn!("cannot check the images: {e}");
                    Err(UnlockStartError::ArchiveMissing(
                        self.settings.images_path.display().to_string(),
                    ))
                }
            };
        }
        self.bytes_done.store(0, Ordering::Relaxed);
        self.bytes_total.store(0, Ordering::Relaxed);
        let phase = self.apply(UnlockEvent::Start);
        let this = self.clone();
        let timeout = self.settings.timeout;
        // The run's log lines carry the id of the request that started it.
        let run = tokio::spawn(tracing::Instrument::in_current_span(async move {
            this.run(credentials).await
        }));
        let this = self.clone();
        // A watcher ends the run in `error` when it panics or overruns its
        // deadline; without it a panic would leave the state running forever.
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            let abort = run.abort_handle();
            let outcome = match tokio::time::timeout(timeout, run).await {
                Ok(Ok(result)) => result,
                Ok(Err(join)) if join.is_panic() => {
                    tracing::error!("the unlock run panicked");
                    Err(
                        "the unlock stopped on an internal error; POST /unlock tries again"
                            .to_owned(),
                    )
                }
                Ok(Err(_)) => Err("the unlock was cancelled".to_owned()),
                Err(_) => {
                    abort.abort();
                    Err(format!(
                        "the unlock did not finish within {} s (UNLOCK_TIMEOUT_SECS); POST /unlock tries again",
                        timeout.as_secs()
                    ))
                }
            };
            if let Err(reason) = outcome {
                this.apply(UnlockEvent::Failed(reason));
            }
        }));
        Ok(phase)
    }

    /// True when there are expected images and every one is present.
    async fn all_images_present(&self) -> Result<bool, RuntimeError> {
        if self.settings.expected_images.is_empty() {
            return Ok(false);
        }
        Ok(self.missing_images().await?.is_empty())
    }

    async fn missing_images(&self) -> Result<Vec<String>, RuntimeError> {
        let mut missing = Vec::new();
        for reference in &self.settings.expected_images {
            if !self.runtime.image_present(reference).await? {
                missing.push(reference.clone());
            }
        }
        Ok(missing)
    }

    async fn run(self: &Arc<Self>, credentials: Credentials) -> Result<(), String> {
        if self.all_images_present().await.unwrap_or(false) {
            self.apply(UnlockEvent::ImagesAlreadyPresent);
            return Ok(());
        }
        let login = || async {
            self.api.login(&credentials).await.map_err(|e| match e {
                ApiError::Unauthorized => "login refused: wrong email or password".to_owned(),
                other => format!("login failed: {other}"),
            })
        };
        let token = login().await?;
        self.apply(UnlockEvent::LoggedIn);
        // §2.5: a token refused here is renewed once, and the call tried once more.
        let fragment = match self.api.key_fragment(&token).await {
            Err(ApiError::Unauthorized) => {
                tracing::info!("the key fragment refused the token; logging in again");
                let token = login().await?;
                self.api.key_fragment(&token).await
            }
            other => other,
        }
        .map_err(|e| format!("key fragment not available: {e}"))?;
        let key = AesKey::from_archive_fragment(fragment.expose());
        drop(fragment);

        let file = tokio::fs::File::open(&self.settings.images_path)
            .await
            .map_err(|e| format!("cannot open the archive: {e}"))?;
        let size = file
            .metadata()
            .await
            .map_err(|e| format!("cannot read the archive: {e}"))?
            .len();
        self.bytes_total.store(size, Ordering::Relaxed);
        self.apply(UnlockEvent::KeyFetched);

        let plaintext = self.clone().decrypting_archive(file, key, size);
        let loaded = self
            .runtime
            .load(plaintext)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!("runtime loaded: {}", loaded.join(", "));
        if self.status().phase == UnlockPhase::Decrypting {
            // The runtime finished without reading to the end: the archive was not taken whole.
            return Err("the container runtime stopped reading the archive before its end".into());
        }
        let missing = self
            .missing_images()
            .await
            .map_err(|e| format!("cannot check the loaded images: {e}"))?;
        if !missing.is_empty() {
            return Err(format!(
                "images missing after the load: {}",
                missing.join(", ")
            ));
        }
        self.apply(UnlockEvent::ImagesVerified);
        Ok(())
    }

    /// The archive file → plaintext, with progress; moves to `loading_images`
    /// once the last byte decrypted with valid padding, else ends in an error.
    fn decrypting_archive(
        self: Arc<Self>,
        file: tokio::fs::File,
        key: AesKey,
        size: u64,
    ) -> ByteStream {
        let decryptor = Decryptor::new(&key).with_expected_len(size);
        let progress = self.clone();
        crate::app::decrypt_file::decrypting_file(
            file,
            decryptor,
            "the archive",
            move |n| {
                progress.bytes_done.fetch_add(n, Ordering::Relaxed);
            },
            move || {
                self.apply(UnlockEvent::ArchiveStreamed);
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::fakes::{FakeClock, FakeResourceApi, FakeRoute};
    use async_trait::async_trait;
    use mockall::predicate::eq;

    mockall::mock! {
        Runtime {}
        #[async_trait]
        impl ContainerRuntime for Runtime {
            async fn image_present(&self, reference: &str) -> Result<bool, RuntimeError>;
            async fn load(&self, archive: ByteStream) -> Result<Vec<String>, RuntimeError>;
        }
    }

    async fn wait_done(service: &UnlockService) -> UnlockStatus {
        for _ in 0..500 {
            let s = service.status();
            if !s.phase.is_running() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("unlock still running");
    }

    /// The interaction is the point here: with every image present, each one is
    /// asked about exactly once per check and nothing is loaded, logged in or fetched.
    #[tokio::test]
    async fn images_already_present_are_checked_once_each_and_nothing_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("images.enc");
        std::fs::write(&archive, [0u8; 32]).unwrap();
        let mut runtime = MockRuntime::new();
        for image in ["azaion/a:1", "azaion/b:2"] {
            runtime
                .expect_image_present()
                .with(eq(image))
                .times(1)
                .returning(|_| Ok(true));
        }
        runtime.expect_load().times(0);
        let api = Arc::new(FakeResourceApi::new());
        let service = Arc::new(UnlockService::new(
            api.clone(),
            Arc::new(runtime),
            Arc::new(FakeClock::default()),
            UnlockSettings {
                images_path: archive,
                expected_images: vec!["azaion/a:1".into(), "azaion/b:2".into()],
                timeout: Duration::from_secs(60),
            },
        ));
        let credentials = Credentials {
            email: "a@b.c".into(),
            password: "pw".into(),
        };
        assert_eq!(
            service.start(credentials).await,
            Ok(UnlockPhase::Authenticating)
        );
        assert_eq!(wait_done(&service).await.phase, UnlockPhase::Ready);
        assert_eq!(api.calls(FakeRoute::Login), 0);
        assert_eq!(api.calls(FakeRoute::KeyFragment), 0);
    }
}
