//! Who may call (PROTOCOL §5.3): the checks every request passes before it
//! is routed to a handler, in the contract's order: its `Host` (DNS
//! rebinding), its browser context (`Origin`, `Sec-Fetch-Site`: cross-site
//! posts), then the client token. A refusal reads, writes and asks nothing.
//! Must never log or echo a token.

use std::path::Path;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::HttpError;
use crate::domain::secret::SecretString;

/// The client token's file could not be used; the loader does not start.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read the token file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the token file {path} is readable or writable by other users (mode {mode:o}): \
         `chmod 600` it (or 640 for a group of trusted clients)"
    )]
    Exposed { path: String, mode: u32 },
    #[error("the token file {path} is empty")]
    Empty { path: String },
}

/// The client token, as its SHA-256: compared in constant time, never printed.
#[derive(Clone)]
pub struct ClientToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for ClientToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientToken(***)")
    }
}

impl ClientToken {
    pub fn new(token: &SecretString) -> Self {
        Self {
            digest: Sha256::digest(token.expose().as_bytes()).into(),
        }
    }

    /// Reads a token file: its content, trimmed. Refused when others may
    /// read it or write it (group read is allowed: a group of trusted clients).
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let shown = path.display().to_string();
        let read = |source| TokenFileError::Read {
            path: shown.clone(),
            source,
        };
        let metadata = std::fs::metadata(path).map_err(read)?;
        if let Some(mode) = crate::adapters::disk::exposed_mode(&metadata) {
            return Err(TokenFileError::Exposed { path: shown, mode });
        }
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(read)?);
        let token = SecretString::new(text.trim());
        if token.is_empty() {
            return Err(TokenFileError::Empty { path: shown });
        }
        Ok(Self::new(&token))
    }

    /// True when `presented` is this token; the time taken does not depend
    /// on how much of it matches.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        bool::from(self.digest.ct_eq(&digest))
    }
}

/// The caller rules of one listener.
#[derive(Debug, Clone)]
pub struct CallerPolicy {
    /// Host names (lower case, IPv6 in brackets, no port) a request may name.
    allowed_hosts: Vec<String>,
    /// Only a TCP listener checks `Host`: a Unix socket has no name to rebind.
    check_host: bool,
    token: Option<ClientToken>,
}

impl CallerPolicy {
    /// `listen_host` is the listen address's own host (`None` on a Unix socket).
    pub fn new(
        listen_host: Option<String>,
        extra_hosts: &[String],
        token: Option<ClientToken>,
    ) -> Self {
        let mut allowed_hosts: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        let check_host = listen_host.is_some();
        allowed_hosts.extend(listen_host);
        allowed_hosts.extend(extra_hosts.iter().map(|h| h.to_ascii_lowercase()));
        allowed_hosts.sort();
        allowed_hosts.dedup();
        Self {
            allowed_hosts,
            check_host,
            token,
        }
    }

    /// Open to any local caller: loopback names, no token (tests, `dev`).
    pub fn loopback() -> Self {
        Self::new(Some("127.0.0.1".to_owned()), &[], None)
    }

    fn host_allowed(&self, host: &str) -> bool {
        self.allowed_hosts.iter().any(|h| h == host)
    }

    /// The §5.3 checks in order; `Err` is the refusal to send.
    pub fn check(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<(), HttpError> {
        if self.check_host {
            let named = headers
                .get(header::HOST)
                .map(|v| v.to_str().ok().and_then(host_of_authority))
                .into_iter()
                .chain(uri.authority().map(|a| host_of_authority(a.as_str())));
            for host in named {
                match host {
                    Some(host) if self.host_allowed(&host) => {}
                    _ => {
                        return Err(forbidden(
                            "this loader answers only to requests for localhost, 127.0.0.1, [::1], \
                             its listen address or LOADER_ALLOWED_HOSTS (Host refused)",
                        ));
                    }
                }
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let allowed = origin
                .to_str()
                .ok()
                .and_then(|o| o.strip_prefix("http://"))
                .filter(|rest| !rest.contains('/'))
                .and_then(host_of_authority)
                .is_some_and(|host| self.host_allowed(&host));
            if !allowed {
                return Err(forbidden(
                    "cross-site requests are refused (Origin is not this loader)",
                ));
            }
        }
        if let Some(site) = headers.get("sec-fetch-site") {
            let site = site.to_str().unwrap_or("").trim().to_ascii_lowercase();
            if site != "same-origin" && site != "none" {
                return Err(forbidden(
                    "cross-site requests are refused (Sec-Fetch-Site is not same-origin)",
                ));
            }
        }
        if let Some(token) = &self.token
            && !token_exempt(method, uri.path())
        {
            let presented = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| bearer(v.as_bytes()));
            match presented {
                Some(presented) if token.matches(presented) => {}
                Some(_) => return Err(unauthorized("the client token is wrong")),
                None => {
                    return Err(unauthorized(
                        "this loader needs its client token: Authorization: Bearer <token>",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `GET /health` is the liveness check, open to all. `GET /` is the status
/// page's static shell: it holds no data, and asks for the token itself
/// before its script reads anything (a browser cannot send a header on a
/// navigation).
fn token_exempt(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD) && (path == "/health" || path == "/")
}

/// `Bearer <token>` (the scheme in any case) → the token's bytes.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// `Host`-style authority → its host, lower case, without the port.
/// `[::1]:8080` → `[::1]`; anything with a user part, a path or odd
/// characters → `None` (refused).
pub fn host_of_authority(authority: &str) -> Option<String> {
    let authority = authority.trim();
    if authority.is_empty() || authority.contains(['@', '/', '\\', ' ', '?', '#']) {
        return None;
    }
    let host = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let rest = &authority[end + 1..];
        if !(rest.is_empty() || port_ok(rest.strip_prefix(':')?)) {
            return None;
        }
        &authority[..=end]
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) if port_ok(port) && !host.contains(':') => host,
            Some(_) => return None,
            None => authority,
        }
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

fn port_ok(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

fn forbidden(detail: &str) -> HttpError {
    HttpError::new(StatusCode::FORBIDDEN, detail)
}

fn unauthorized(detail: &str) -> HttpError {
    HttpError::new(StatusCode::UNAUTHORIZED, detail)
        .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
}

/// The middleware: refuses before routing reaches a handler.
pub async fn guard(
    State(policy): State<std::sync::Arc<CallerPolicy>>,
    req: Request,
    next: Next,
) -> Response {
    match policy.check(req.method(), req.uri(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(refusal) => refusal.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn check(policy: &CallerPolicy, pairs: &[(&str, &str)]) -> Result<(), StatusCode> {
        policy
            .check(&Method::POST, &Uri::from_static("/load/a"), &headers(pairs))
            .map_err(|e| e.status)
    }

    #[test]
    fn hosts_are_matched_exactly_with_any_port() {
        for (authority, host) in [
            ("localhost", Some("localhost")),
            ("LOCALHOST:8080", Some("localhost")),
            ("127.0.0.1:1", Some("127.0.0.1")),
            ("[::1]:8080", Some("[::1]")),
            ("[::1]", Some("[::1]")),
            ("evil.example:8080", Some("evil.example")),
            ("127.0.0.1.evil.example", Some("127.0.0.1.evil.example")),
            ("user@localhost", None),
            ("localhost:80x", None),
            ("localhost:", None),
            ("[::1]x", None),
            ("::1", None),
            ("", None),
        ] {
            assert_eq!(host_of_authority(authority).as_deref(), host, "{authority}");
        }
    }

    #[test]
    fn a_rebound_or_look_alike_host_is_refused_and_loopback_names_pass() {
        let policy = CallerPolicy::new(Some("10.0.0.5".into()), &["gs-1.local".into()], None);
        for ok in [
            "localhost:8080",
            "127.0.0.1",
            "[::1]:1",
            "10.0.0.5:8080",
            "GS-1.local",
        ] {
            assert_eq!(check(&policy, &[("host", ok)]), Ok(()), "{ok}");
        }
        for bad in [
            "attacker.example:8080",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "localhost.",
            "0.0.0.0",
            "a@localhost",
        ] {
            assert_eq!(
                check(&policy, &[("host", bad)]),
                Err(StatusCode::FORBIDDEN),
                "{bad}"
            );
        }
        // HTTP/1.0 without Host passes this step.
        assert_eq!(check(&policy, &[]), Ok(()));
        // An absolute-form target names its host too.
        let absolute = Uri::from_static("http://evil.example/load/a");
        assert!(
            policy
                .check(&Method::POST, &absolute, &headers(&[("host", "localhost")]))
                .is_err()
        );
    }

    #[test]
    fn a_unix_socket_does_not_check_host() {
        let policy = CallerPolicy::new(None, &[], None);
        assert_eq!(check(&policy, &[("host", "anything.example")]), Ok(()));
        // ... but still refuses a browser from elsewhere.
        assert_eq!(
            check(&policy, &[("origin", "https://evil.example")]),
            Err(StatusCode::FORBIDDEN)
        );
    }

    #[test]
    fn cross_site_origins_and_fetch_sites_are_refused() {
        let policy = CallerPolicy::loopback();
        for ok in [
            vec![("origin", "http://127.0.0.1:8080")],
            vec![("origin", "http://localhost")],
            vec![("sec-fetch-site", "same-origin")],
            vec![("sec-fetch-site", "none")],
        ] {
            assert_eq!(check(&policy, &ok), Ok(()), "{ok:?}");
        }
        for bad in [
            vec![("origin", "https://evil.example")],
            vec![("origin", "http://evil.example:8080")],
            vec![("origin", "null")],
            vec![("origin", "https://127.0.0.1:8080")],
            vec![("origin", "http://127.0.0.1.evil.example")],
            vec![("origin", "http://127.0.0.1/x")],
            vec![("sec-fetch-site", "cross-site")],
            vec![("sec-fetch-site", "same-site")],
            vec![
                ("origin", "http://localhost"),
                ("sec-fetch-site", "cross-site"),
            ],
        ] {
            assert_eq!(check(&policy, &bad), Err(StatusCode::FORBIDDEN), "{bad:?}");
        }
    }

    #[test]
    fn the_token_is_required_except_for_health_and_the_page_shell() {
        let token = ClientToken::new(&SecretString::new("t0ken"));
        let policy = CallerPolicy::new(Some("127.0.0.1".into()), &[], Some(token));
        assert_eq!(check(&policy, &[("authorization", "Bearer t0ken")]), Ok(()));
        assert_eq!(
            check(&policy, &[("authorization", "bearer  t0ken ")]),
            Ok(())
        );
        for bad in [
            vec![],
            vec![("authorization", "Bearer t0ke")],
            vec![("authorization", "Bearer t0ken2")],
            vec![("authorization", "Basic dDBrZW4=")],
            vec![("authorization", "t0ken")],
            vec![("authorization", "Bearer ")],
        ] {
            assert_eq!(
                check(&policy, &bad),
                Err(StatusCode::UNAUTHORIZED),
                "{bad:?}"
            );
        }
        let none = HeaderMap::new();
        for (method, path, open) in [
            (Method::GET, "/health", true),
            (Method::GET, "/", true),
            (Method::POST, "/health", false),
            (Method::GET, "/status", false),
            (Method::GET, "/metrics", false),
        ] {
            let uri: Uri = path.parse().unwrap();
            assert_eq!(
                policy.check(&method, &uri, &none).is_ok(),
                open,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn a_token_file_readable_by_others_or_empty_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  s3cret-token\n").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o640, true),
            (0o400, true),
            (0o644, false),
            (0o620, false),
            (0o602, false),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(ClientToken::load(&path).is_ok(), ok, "{mode:o}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let token = ClientToken::load(&path).unwrap();
        assert!(token.matches(b"s3cret-token") && !token.matches(b"s3cret-token\n"));
        assert!(!format!("{token:?}").contains("s3cret"));
        std::fs::write(&path, " \n").unwrap();
        assert!(matches!(
            ClientToken::load(&path),
            Err(TokenFileError::Empty { .. })
        ));
        assert!(matches!(
            ClientToken::load(&dir.path().join("missing")),
            Err(TokenFileError::Read { .. })
        ));
    }
}
