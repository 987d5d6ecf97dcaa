//! The unlock state machine of PROTOCOL §6 as pure transitions:
//! `(state, event) → new state`, or a refusal. The application drives it;
//! this module decides what may happen next and never runs anything.

use std::fmt;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnlockPhase {
    Idle,
    Authenticating,
    DownloadingKey,
    Decrypting,
    LoadingImages,
    Ready,
    Error,
}

impl UnlockPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Authenticating => "authenticating",
            Self::DownloadingKey => "downloading_key",
            Self::Decrypting => "decrypting",
            Self::LoadingImages => "loading_images",
            Self::Ready => "ready",
            Self::Error => "error",
        }
    }

    /// True while a background run owns the machine.
    pub fn is_running(self) -> bool {
        matches!(
            self,
            Self::Authenticating | Self::DownloadingKey | Self::Decrypting | Self::LoadingImages
        )
    }
}

impl fmt::Display for UnlockPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnlockEvent {
    /// `POST /unlock` asked for a run (the archive exists).
    Start,
    /// `POST /unlock` found no archive but every expected image present.
    FoundImagesWithoutArchive,
    /// The background run found every expected image present already.
    ImagesAlreadyPresent,
    LoggedIn,
    KeyFetched,
    /// The whole archive went through decryption into the runtime.
    ArchiveStreamed,
    /// Every expected image is present after the load.
    ImagesVerified,
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnlockState {
    pub phase: UnlockPhase,
    /// The reason of the last failure, while in `error`.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unlock cannot go from {from} on {event}")]
pub struct Refused {
    pub from: UnlockPhase,
    pub event: String,
}

impl Default for UnlockState {
    fn default() -> Self {
        Self::idle()
    }
}

impl UnlockState {
    pub fn idle() -> Self {
        Self {
            phase: UnlockPhase::Idle,
            error: None,
        }
    }

    fn at(phase: UnlockPhase) -> Self {
        Self { phase, error: None }
    }

    /// True when `POST /unlock` may start a run (`idle` or `error`).
    pub fn can_start(&self) -> bool {
        matches!(self.phase, UnlockPhase::Idle | UnlockPhase::Error)
    }

    pub fn next(&self, event: UnlockEvent) -> Result<UnlockState, Refused> {
        use UnlockEvent as E;
        use UnlockPhase as P;
        let next = match (self.phase, &event) {
            (P::Idle | P::Error, E::Start) => Self::at(P::Authenticating),
            (P::Idle | P::Error, E::FoundImagesWithoutArchive) => Self::at(P::Ready),
            (P::Authenticating, E::ImagesAlreadyPresent) => Self::at(P::Ready),
            (P::Authenticating, E::LoggedIn) => Self::at(P::DownloadingKey),
            (P::DownloadingKey, E::KeyFetched) => Self::at(P::Decrypting),
            (P::Decrypting, E::ArchiveStreamed) => Self::at(P::LoadingImages),
            (P::LoadingImages, E::ImagesVerified) => Self::at(P::Ready),
            (phase, E::Failed(reason)) if phase.is_running() => Self {
                phase: P::Error,
                error: Some(reason.clone()),
            },
            (from, _) => {
                return Err(Refused {
                    from,
                    event: format!("{event:?}"),
                });
            }
        };
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use UnlockEvent as E;
    use UnlockPhase as P;

    fn run(events: &[UnlockEvent]) -> Result<UnlockState, Refused> {
        events
            .iter()
            .try_fold(UnlockState::idle(), |s, e| s.next(e.clone()))
    }

    #[test]
    fn the_happy_path_walks_every_phase_in_order() {
        let mut s = UnlockState::idle();
        for (event, phase) in [
            (E::Start, P::Authenticating),
            (E::LoggedIn, P::DownloadingKey),
            (E::KeyFetched, P::Decrypting),
            (E::ArchiveStreamed, P::LoadingImages),
            (E::ImagesVerified, P::Ready),
        ] {
            s = s.next(event).unwrap();
            assert_eq!(s.phase, phase);
            assert_eq!(s.error, None);
        }
    }

    #[test]
    fn images_present_short_circuits_to_ready() {
        assert_eq!(
            run(&[E::Start, E::ImagesAlreadyPresent]).unwrap().phase,
            P::Ready
        );
        assert_eq!(
            run(&[E::FoundImagesWithoutArchive]).unwrap().phase,
            P::Ready
        );
    }

    #[test]
    fn a_failure_in_any_running_phase_lands_in_error_and_can_be_retried() {
        for prefix in [
            vec![E::Start],
            vec![E::Start, E::LoggedIn],
            vec![E::Start, E::LoggedIn, E::KeyFetched],
            vec![E::Start, E::LoggedIn, E::KeyFetched, E::ArchiveStreamed],
        ] {
            let mut events = prefix.clone();
            events.push(E::Failed("boom".into()));
            let s = run(&events).unwrap();
            assert_eq!(s.phase, P::Error);
            assert_eq!(s.error.as_deref(), Some("boom"));
            let retried = s.next(E::Start).unwrap();
            assert_eq!(
                retried,
                UnlockState {
                    phase: P::Authenticating,
                    error: None
                }
            );
        }
    }

    #[test]
    fn a_second_start_while_running_or_ready_is_refused() {
        for prefix in [
            vec![E::Start],
            vec![E::Start, E::LoggedIn],
            vec![E::Start, E::ImagesAlreadyPresent],
        ] {
            let s = run(&prefix).unwrap();
            assert!(!s.can_start());
            assert!(s.next(E::Start).is_err());
        }
    }

    #[test]
    fn out_of_order_events_are_refused() {
        assert!(run(&[E::LoggedIn]).is_err());
        assert!(run(&[E::Failed("x".into())]).is_err());
        assert!(run(&[E::Start, E::KeyFetched]).is_err());
        assert!(run(&[E::Start, E::LoggedIn, E::ImagesVerified]).is_err());
    }

    #[test]
    fn phase_names_match_the_protocol() {
        let names: Vec<_> = [
            P::Idle,
            P::Authenticating,
            P::DownloadingKey,
            P::Decrypting,
            P::LoadingImages,
            P::Ready,
            P::Error,
        ]
        .iter()
        .map(|p| {
            serde_json::to_value(p)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
        assert_eq!(
            names,
            [
                "idle",
                "authenticating",
                "downloading_key",
                "decrypting",
                "loading_images",
                "ready",
                "error"
            ]
        );
    }
}
