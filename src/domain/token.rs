//! The claims of the Resource API's JWT (PROTOCOL §2.1), read without the
//! signing key: the loader only needs who it is and when the token runs out.

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub user_id: Option<String>,
    pub email: Option<String>,
    pub role: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the API's token is not a readable JWT")]
pub struct MalformedToken;

#[derive(Deserialize)]
struct RawClaims {
    nameid: Option<serde_json::Value>,
    sub: Option<serde_json::Value>,
    unique_name: Option<String>,
    email: Option<String>,
    role: Option<serde_json::Value>,
    exp: Option<serde_json::Value>,
}

fn as_text(v: serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Array(items) => items.into_iter().next().and_then(as_text),
        _ => None,
    }
}

impl Claims {
    pub fn from_jwt(token: &str) -> Result<Self, MalformedToken> {
        let data = jsonwebtoken::dangerous::insecure_decode::<RawClaims>(token)
            .map_err(|_| MalformedToken)?;
        let raw = data.claims;
        let exp = raw.exp.and_then(|v| match v {
            serde_json::Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        });
        Ok(Self {
            user_id: raw
                .nameid
                .and_then(as_text)
                .or_else(|| raw.sub.and_then(as_text)),
            email: raw.unique_name.or(raw.email),
            role: raw.role.and_then(as_text),
            expires_at: exp,
        })
    }

    /// True when the token expires within `margin_secs` of `now_secs`.
    pub fn expires_within(&self, now_secs: u64, margin_secs: u64) -> bool {
        self.expires_at
            .is_some_and(|exp| exp <= now_secs.saturating_add(margin_secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn jwt(claims: &str) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims.as_bytes());
        format!("{header}.{body}.c2ln")
    }

    #[test]
    fn reads_dotnet_style_claims() {
        let c = Claims::from_jwt(&jwt(
            r#"{"nameid":"42","unique_name":"a@b.c","role":"User","exp":1700000000}"#,
        ))
        .unwrap();
        assert_eq!(c.user_id.as_deref(), Some("42"));
        assert_eq!(c.email.as_deref(), Some("a@b.c"));
        assert_eq!(c.role.as_deref(), Some("User"));
        assert_eq!(c.expires_at, Some(1_700_000_000));
        assert!(c.expires_within(1_699_999_990, 30));
        assert!(!c.expires_within(1_600_000_000, 30));
    }

    #[test]
    fn falls_back_to_sub_and_email() {
        let c = Claims::from_jwt(&jwt(r#"{"sub":7,"email":"x@y.z"}"#)).unwrap();
        assert_eq!(c.user_id.as_deref(), Some("7"));
        assert_eq!(c.email.as_deref(), Some("x@y.z"));
        assert_eq!(c.expires_at, None);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(Claims::from_jwt("not a jwt"), Err(MalformedToken));
        assert_eq!(Claims::from_jwt("a.b.c"), Err(MalformedToken));
    }
}
