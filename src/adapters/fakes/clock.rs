//! A clock that only moves when told to.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::lock;
use crate::ports::Clock;

pub struct FakeClock {
    now: Mutex<SystemTime>,
}

impl FakeClock {
    pub fn at_unix(secs: u64) -> Self {
        Self {
            now: Mutex::new(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
        }
    }

    pub fn advance(&self, by: Duration) {
        *lock(&self.now) += by;
    }
}

impl Default for FakeClock {
    fn default() -> Self {
        Self::at_unix(1_900_000_000)
    }
}

impl Clock for FakeClock {
    fn now(&self) -> SystemTime {
        *lock(&self.now)
    }
}
