//! `hardware`: the device's fingerprint line (docs/PROTOCOL.md §4) and its hash
//! (§1.1), exactly as the loader computes them at login. Read-only: it never
//! contacts anything.

use super::CliError;
use crate::adapters::outbound::hardware_sysinfo::SysinfoProbe;
use crate::domain::cipher::CryptoBackend;
use crate::domain::keys::hardware_hash;
use crate::ports::HardwareProbe;

/// The lines `hardware` prints: the fingerprint, `hash: <hash>`, then
/// `crypto: <backend>` (the AES implementation this CPU runs).
pub async fn run() -> Result<(), CliError> {
    let parts = SysinfoProbe::new()
        .probe()
        .await
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let line = parts.fingerprint_line();
    println!("{line}");
    println!("hash: {}", hardware_hash(&line));
    let backend = CryptoBackend::detect();
    let note = if backend.is_hardware() {
        "hardware AES"
    } else {
        "software AES: decryption is capped by one core"
    };
    println!("crypto: {} ({note})", backend.as_str());
    Ok(())
}
