//! The Resource API over HTTP (PROTOCOL §2) with reqwest and rustls (ring).
//! Translates HTTP statuses and transport failures into [`ApiError`]; it must
//! never log or put into an error a password, a token or a key fragment, and
//! never accept an answer larger than [`MAX_RESPONSE_BYTES`].

use std::sync::Once;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use reqwest::{Client, RequestBuilder, Response, StatusCode, Url};
use serde::{Deserialize, Serialize};

use crate::domain::names::Folder;
use crate::domain::secret::{SecretBytes, SecretString};
use crate::ports::{ApiError, Credentials, ResourceApi};

/// The largest answer accepted. Everything the API sends is small (a login
/// answer, `cdn.yaml`, a small part of at most 3 KiB, a key fragment); a
/// larger body is a broken or hostile peer, refused before it fills memory.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Timeouts of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpApiOptions {
    /// Time allowed to open the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time allowed for a whole call, from sending to the last byte of the answer.
    pub request_timeout: Duration,
}

impl Default for HttpApiOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// [`ResourceApi`] over HTTP(S). Cheap to clone: the connection pool is shared.
#[derive(Debug, Clone)]
pub struct HttpResourceApi {
    client: Client,
    /// The base URL without a trailing slash.
    base: String,
}

static RUSTLS_PROVIDER: Once = Once::new();

/// reqwest is built without a crypto provider: install ring once for the process.
/// Another provider installed first (by the S3 client, say) is kept.
fn install_rustls_provider() {
    RUSTLS_PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[derive(Serialize)]
struct LoginRequest<'a> {
    email: &'a str,
    password: &'a str,
}

#[derive(Deserialize)]
struct LoginResponse {
    #[serde(alias = "Token")]
    token: Option<String>,
}

#[derive(Serialize)]
struct GetResourceRequest<'a> {
    password: &'a str,
    hardware: &'a str,
    #[serde(rename = "fileName")]
    file_name: &'a str,
}

/// Which call a status belongs to: login reads 401/403/409 as bad credentials,
/// the other calls read 409 as a device bound to another fingerprint.
#[derive(Clone, Copy)]
enum Call {
    Login,
    Authenticated,
}

fn status_error(call: Call, status: StatusCode) -> ApiError {
    match (call, status.as_u16()) {
        (Call::Login, 401 | 403 | 409) => ApiError::Unauthorized,
        (Call::Authenticated, 401 | 403) => ApiError::Unauthorized,
        (Call::Authenticated, 409) => ApiError::DeviceMismatch,
        (Call::Authenticated, 404) => ApiError::NotFound,
        (_, status) => ApiError::Upstream { status },
    }
}

/// A transport failure as a reason fit for logs: no URL (it could carry
/// credentials), and no request content; only the error kind and its causes.
fn transport_error(e: reqwest::Error) -> ApiError {
    let e = e.without_url();
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "the connection failed while reading the answer"
    } else if e.is_request() {
        "the request failed"
    } else {
        "HTTP failure"
    };
    let mut reason = kind.to_owned();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    ApiError::Unavailable(reason)
}

/// Reads the whole body, refusing more than [`MAX_RESPONSE_BYTES`].
async fn read_capped(mut response: Response) -> Result<Bytes, ApiError> {
    let too_big = || {
        ApiError::Unexpected(format!(
            "the answer is larger than {MAX_RESPONSE_BYTES} bytes"
        ))
    };
    if response
        .content_length()
        .is_some_and(|len| len > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_big());
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

impl HttpResourceApi {
    /// Builds the client for the API at `base_url` (`http` or `https`, a
    /// trailing slash allowed). Fails with `Unexpected` on a URL that is not
    /// one, or when the TLS stack cannot be set up.
    pub fn new(base_url: &str, options: HttpApiOptions) -> Result<Self, ApiError> {
        let url = Url::parse(base_url.trim()).map_err(|_| {
            ApiError::Unexpected("the Resource API URL is not a valid URL".to_owned())
        })?;
        if !matches!(url.scheme(), "http" | "https")
            || url.host_str().is_none()
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(ApiError::Unexpected(
                "the Resource API URL must be http(s)://host[:port][/path], without query or fragment"
                    .to_owned(),
            ));
        }
        install_rustls_provider();
        let client = Client::builder()
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            // A redirect would resend a password or a token elsewhere: answer it as an error.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("azaion-loader/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                ApiError::Unexpected(format!("cannot build the HTTP client: {}", e.without_url()))
            })?;
        Ok(Self {
            client,
            base: url.as_str().trim_end_matches('/').to_owned(),
        })
    }

    /// The base URL in use, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends the request and returns the body of a 2xx answer, or the mapped error.
    async fn send(
        &self,
        call: Call,
        what: &str,
        request: RequestBuilder,
    ) -> Result<Bytes, ApiError> {
        let response = request.send().await.map_err(|e| {
            let err = transport_error(e);
            tracing::debug!(call = what, error = %err, "Resource API call failed");
            err
        })?;
        let status = response.status();
        tracing::debug!(
            call = what,
            status = status.as_u16(),
            "Resource API answered"
        );
        if !status.is_success() {
            return Err(status_error(call, status));
        }
        read_capped(response).await
    }
}

#[async_trait]
impl ResourceApi for HttpResourceApi {
    async fn login(&self, credentials: &Credentials) -> Result<SecretString, ApiError> {
        let request = self.client.post(self.url("/login")).json(&LoginRequest {
            email: &credentials.email,
            password: credentials.password.expose(),
        });
        let body = self.send(Call::Login, "login", request).await?;
        let answer: LoginResponse = serde_json::from_slice(&body).map_err(|_| {
            ApiError::Unexpected("the login answer is not the expected JSON".to_owned())
        })?;
        match answer.token {
            Some(token) if !token.trim().is_empty() => Ok(SecretString::new(token)),
            _ => Err(ApiError::Unexpected(
                "the login answer holds no token".to_owned(),
            )),
        }
    }

    async fn get_resource(
        &self,
        token: &SecretString,
        folder: Option<&Folder>,
        file_name: &str,
        password: &SecretString,
        hardware: &str,
    ) -> Result<Bytes, ApiError> {
        let folder = folder.map(Folder::as_str).unwrap_or("");
        let request = self
            .client
            .post(self.url(&format!("/resources/get/{folder}")))
            .bearer_auth(token.expose())
            .json(&GetResourceRequest {
                password: password.expose(),
                hardware,
                file_name,
            });
        self.send(Call::Authenticated, "get resource", request)
            .await
    }

    async fn put_resource(
        &self,
        token: &SecretString,
        folder: &Folder,
        file_name: &str,
        data: Bytes,
    ) -> Result<(), ApiError> {
        let len = data.len() as u64;
        let part = reqwest::multipart::Part::stream_with_length(data, len)
            .file_name(file_name.to_owned())
            .mime_str("application/octet-stream")
            .map_err(|_| ApiError::Unexpected("bad multipart content type".to_owned()))?;
        let form = reqwest::multipart::Form::new().part("data", part);
        let request = self
            .client
            .post(self.url(&format!("/resources/{}", folder.as_str())))
            .bearer_auth(token.expose())
            .multipart(form);
        self.send(Call::Authenticated, "put resource", request)
            .await
            .map(|_| ())
    }

    async fn key_fragment(&self, token: &SecretString) -> Result<SecretBytes, ApiError> {
        let request = self
            .client
            .get(self.url("/binary-split/key-fragment"))
            .bearer_auth(token.expose());
        let body = self
            .send(Call::Authenticated, "key fragment", request)
            .await?;
        if body.is_empty() {
            return Err(ApiError::Unexpected("the key fragment is empty".to_owned()));
        }
        Ok(SecretBytes::new(body.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_maps_401_403_and_409_to_unauthorized() {
        for status in [401, 403, 409] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(status_error(Call::Login, status), ApiError::Unauthorized);
        }
        assert_eq!(
            status_error(Call::Login, StatusCode::NOT_FOUND),
            ApiError::Upstream { status: 404 }
        );
    }

    #[test]
    fn resource_calls_map_statuses_to_what_the_caller_can_act_on() {
        for (status, expected) in [
            (401, ApiError::Unauthorized),
            (403, ApiError::Unauthorized),
            (409, ApiError::DeviceMismatch),
            (404, ApiError::NotFound),
            (500, ApiError::Upstream { status: 500 }),
            (503, ApiError::Upstream { status: 503 }),
            (302, ApiError::Upstream { status: 302 }),
            (400, ApiError::Upstream { status: 400 }),
        ] {
            let code = StatusCode::from_u16(status).unwrap();
            assert_eq!(
                status_error(Call::Authenticated, code),
                expected,
                "{status}"
            );
        }
    }

    #[test]
    fn the_base_url_may_end_with_a_slash_and_may_carry_a_path() {
        let api = HttpResourceApi::new("http://127.0.0.1:1/", HttpApiOptions::default()).unwrap();
        assert_eq!(api.base_url(), "http://127.0.0.1:1");
        assert_eq!(api.url("/login"), "http://127.0.0.1:1/login");
        let api =
            HttpResourceApi::new("https://api.example/v1/", HttpApiOptions::default()).unwrap();
        assert_eq!(api.url("/login"), "https://api.example/v1/login");
    }

    #[test]
    fn a_base_url_that_is_not_http_is_refused() {
        for bad in [
            "",
            "api.azaion.com",
            "ftp://host",
            "http://host/?q=1",
            "unix:/x",
        ] {
            assert!(
                matches!(
                    HttpResourceApi::new(bad, HttpApiOptions::default()),
                    Err(ApiError::Unexpected(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_get_resource_body_uses_the_protocol_field_names() {
        let body = serde_json::to_value(GetResourceRequest {
            password: "p",
            hardware: "h",
            file_name: "cdn.yaml",
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"password": "p", "hardware": "h", "fileName": "cdn.yaml"})
        );
    }
}
