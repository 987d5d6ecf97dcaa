//! The hardware fingerprint line of PROTOCOL §4, built from probed parts.
//! The Resource API binds a user to this exact string, so it must be
//! deterministic: the same parts always give the same line. [`parse`] reads
//! the parts out of the texts a probe finds (`/proc`, `/sys`, `lspci -n`).

pub mod parse;

/// What a hardware probe found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HardwareParts {
    pub cpu_model: String,
    /// GPU names, in a stable order; empty means "none".
    pub gpu_names: Vec<String>,
    /// `MemTotal` of `/proc/meminfo`, in KiB.
    pub memory_kib: u64,
    /// Serial of the system disk, if known.
    pub drive_serial: Option<String>,
}

/// Collapses whitespace and control characters so the line stays one line.
fn clean(part: &str) -> String {
    part.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

impl HardwareParts {
    /// `CPU: {cpu}. GPU: {gpus or "none"}. Memory: {KiB}. DriveSerial: {serial or "unknown"}`
    pub fn fingerprint_line(&self) -> String {
        let gpus: Vec<String> = self
            .gpu_names
            .iter()
            .map(|g| clean(g))
            .filter(|g| !g.is_empty())
            .collect();
        let gpu = if gpus.is_empty() {
            "none".to_owned()
        } else {
            gpus.join(", ")
        };
        let serial = self
            .drive_serial
            .as_deref()
            .map(clean)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".to_owned());
        format!(
            "CPU: {}. GPU: {gpu}. Memory: {}. DriveSerial: {serial}",
            clean(&self.cpu_model),
            self.memory_kib
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_vector_line() {
        let parts = HardwareParts {
            cpu_model: "AMD EPYC".into(),
            gpu_names: vec!["NVIDIA Jetson Orin".into()],
            memory_kib: 16_384_000,
            drive_serial: Some("S3EVNX0K123456".into()),
        };
        assert_eq!(
            parts.fingerprint_line(),
            "CPU: AMD EPYC. GPU: NVIDIA Jetson Orin. Memory: 16384000. DriveSerial: S3EVNX0K123456"
        );
    }

    #[test]
    fn missing_parts_read_none_and_unknown_and_newlines_are_folded() {
        let parts = HardwareParts {
            cpu_model: " Intel\n Xeon  ".into(),
            gpu_names: vec![],
            memory_kib: 1,
            drive_serial: Some("  ".into()),
        };
        assert_eq!(
            parts.fingerprint_line(),
            "CPU: Intel Xeon. GPU: none. Memory: 1. DriveSerial: unknown"
        );
    }
}
