//! The stored login (issue 13): a file with the email and password, so that
//! the loader logs in by itself after a reboot.
//!
//! ```text
//! # /etc/azaion/login.credentials, mode 0600 or 0640 (group azaion-loader)
//! email=operator@example.com
//! password=everything after the first '=' up to the end of the line
//! ```
//!
//! Blank lines and lines starting with `#` are ignored. A file that others
//! may read or write is refused, as the token file is: the password would
//! be anyone's on the device.

use std::path::{Path, PathBuf};

use crate::domain::secret::SecretString;
use crate::ports::Credentials;

/// The name under which systemd hands the file in:
/// `LoadCredential=login:/etc/azaion/login.credentials`.
pub const SYSTEMD_CREDENTIAL: &str = "login";

#[derive(Debug, thiserror::Error)]
pub enum CredentialsFileError {
    #[error("cannot read the credentials file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the credentials file {path} is readable or writable by other users (mode {mode:o}): \
         `chmod 600` it (or 640 with the service's group)"
    )]
    Exposed { path: String, mode: u32 },
    #[error("the credentials file {path} {problem}")]
    Format { path: String, problem: String },
}

/// `$CREDENTIALS_DIRECTORY/login`, when systemd handed one in.
pub fn from_systemd(directory: Option<PathBuf>) -> Option<PathBuf> {
    let path = directory?.join(SYSTEMD_CREDENTIAL);
    path.is_file().then_some(path)
}

/// Reads the email and password; refuses a file others may read or write.
pub fn read(path: &Path) -> Result<Credentials, CredentialsFileError> {
    let shown = path.display().to_string();
    let read_error = |source| CredentialsFileError::Read {
        path: shown.clone(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(read_error)?;
    if let Some(mode) = crate::adapters::disk::exposed_mode(&metadata) {
        return Err(CredentialsFileError::Exposed { path: shown, mode });
    }
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(read_error)?);
    parse(&text).map_err(|problem| CredentialsFileError::Format {
        path: shown,
        problem,
    })
}

/// The `email=` and `password=` lines; the problem otherwise (never a value).
pub fn parse(text: &str) -> Result<Credentials, String> {
    let mut email = None;
    let mut password = None;
    for (number, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!(
                "has a line without `=` (line {}): expected email=... and password=...",
                number + 1
            ));
        };
        let slot = match key.trim() {
            "email" => &mut email,
            "password" => &mut password,
            _ => {
                return Err(format!(
                    "has an unknown key on line {} (expected email or password)",
                    number + 1
                ));
            }
        };
        if slot.replace(value).is_some() {
            return Err(format!("names `{}` twice", key.trim()));
        }
    }
    let email = email.map(str::trim).filter(|e| !e.is_empty());
    let password = password.filter(|p| !p.is_empty());
    match (email, password) {
        (Some(email), Some(password)) => Ok(Credentials {
            email: email.to_owned(),
            password: SecretString::new(password),
        }),
        (None, _) => Err("has no email= line (or an empty one)".to_owned()),
        (_, None) => Err("has no password= line (or an empty one)".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn email_and_password_are_read_with_the_password_kept_exactly() {
        let c =
            parse("# stored login\n\nemail = op@example.com \npassword= p=ss word#1 \r\n").unwrap();
        assert_eq!(c.email, "op@example.com");
        assert_eq!(c.password.expose(), " p=ss word#1 ");
    }

    #[test]
    fn a_malformed_file_is_refused_without_echoing_its_values() {
        for (text, expected) in [
            ("email=a@b\n", "no password"),
            ("password=hunter2\n", "no email"),
            ("email=a@b\npassword=\n", "no password"),
            ("email=a@b\npassword=hunter2\npassword=hunter3\n", "twice"),
            ("email=a@b\nhunter2\n", "without `=`"),
            ("email=a@b\npasswd=hunter2\n", "unknown key"),
        ] {
            let problem = parse(text).unwrap_err();
            assert!(problem.contains(expected), "{text:?}: {problem}");
            assert!(!problem.contains("hunter"), "{problem}");
        }
    }

    #[test]
    fn a_file_that_others_may_read_is_refused_and_a_private_one_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("login");
        std::fs::write(&path, "email=a@b\npassword=pw\n").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o640, true),
            (0o400, true),
            (0o644, false),
            (0o660, false),
            (0o604, false),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let result = read(&path);
            assert_eq!(result.is_ok(), ok, "{mode:o}");
            if let Err(e) = result {
                assert!(e.to_string().contains("chmod 600"), "{e}");
            }
        }
        assert!(matches!(
            read(&dir.path().join("missing")),
            Err(CredentialsFileError::Read { .. })
        ));
    }

    #[test]
    fn systemd_hands_in_the_login_credential_only_when_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(from_systemd(None), None);
        assert_eq!(from_systemd(Some(dir.path().to_path_buf())), None);
        std::fs::write(dir.path().join("login"), "email=a@b\npassword=pw\n").unwrap();
        assert_eq!(
            from_systemd(Some(dir.path().to_path_buf())),
            Some(dir.path().join("login"))
        );
    }
}
