//! The claims of the Resource API's JWT (PROTOCOL §2.1), read without the
//! signing key: the loader only needs who it is and when the token runs out.
//! A JWT is three base64url parts joined by dots; the claims are the middle
//! one's JSON. Decoded here with `base64` and `serde_json`, so the loader
//! carries no JWT signing library (and none of its RSA/ECDSA code).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
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

/// The JOSE header: only checked to be a JSON object naming an algorithm.
#[derive(Deserialize)]
struct RawHeader {
    #[allow(dead_code)]
    alg: String,
}

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
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(MalformedToken);
        };
        let json = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part.trim_end_matches('='))
                .map_err(|_| MalformedToken)
        };
        serde_json::from_slice::<RawHeader>(&json(header)?).map_err(|_| MalformedToken)?;
        let raw: RawClaims = serde_json::from_slice(&json(claims)?).map_err(|_| MalformedToken)?;
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
    fn a_role_list_gives_its_first_role_and_a_text_expiry_is_read() {
        // .NET writes several roles as an array, and some issuers write exp as text.
        let c = Claims::from_jwt(&jwt(
            r#"{"nameid":["9","10"],"role":["Admin","User"],"exp":"1700000000"}"#,
        ))
        .unwrap();
        assert_eq!(c.user_id.as_deref(), Some("9"));
        assert_eq!(c.role.as_deref(), Some("Admin"));
        assert_eq!(c.expires_at, Some(1_700_000_000));
        let c = Claims::from_jwt(&jwt(r#"{"role":{"a":1},"exp":true}"#)).unwrap();
        assert_eq!((c.role, c.expires_at), (None, None));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(Claims::from_jwt("not a jwt"), Err(MalformedToken));
        assert_eq!(Claims::from_jwt("a.b.c"), Err(MalformedToken));
        let good = jwt(r#"{"sub":"1"}"#);
        assert!(Claims::from_jwt(&good).is_ok());
        // Two parts, four parts, a header that is not JSON, claims that are not an object.
        let (header, rest) = good.split_once('.').unwrap();
        let claims = rest.split('.').next().unwrap();
        assert_eq!(
            Claims::from_jwt(&format!("{header}.{claims}")),
            Err(MalformedToken)
        );
        assert_eq!(Claims::from_jwt(&format!("{good}.x")), Err(MalformedToken));
        let not_json = URL_SAFE_NO_PAD.encode(b"alg=HS256");
        assert_eq!(
            Claims::from_jwt(&format!("{not_json}.{claims}.c2ln")),
            Err(MalformedToken)
        );
        assert_eq!(Claims::from_jwt(&jwt("[1,2]")), Err(MalformedToken));
    }
}

/// JWT claims from arbitrary strings and any JSON body: never a panic; `exp` read back.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(serde_json::Value::from),
            any::<bool>().prop_map(serde_json::Value::from),
            "\\PC{0,12}".prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
        ];
        prop_oneof![
            leaf.clone(),
            prop::collection::btree_map("[a-z_]{1,10}", leaf.clone(), 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            prop::collection::vec(leaf, 0..4).prop_map(serde_json::Value::Array),
        ]
    }

    proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 512, failure_persistence: None, ..proptest::test_runner::Config::default() })]

        #[test]
        fn jwt_claims_parsing_survives_arbitrary_strings(token in prop_oneof![
            "\\PC{0,80}",
            "[A-Za-z0-9_=-]{0,20}\\.[A-Za-z0-9_=-]{0,40}\\.[A-Za-z0-9_=-]{0,20}",
        ]) {
            let _ = Claims::from_jwt(&token);
        }

        #[test]
        fn jwt_claims_are_read_from_any_json_body(claims in json_value(), exp in prop::option::of(any::<u64>())) {
            let mut claims = match claims {
                serde_json::Value::Object(map) => map,
                other => {
                    let mut map = serde_json::Map::new();
                    map.insert("unique_name".into(), other);
                    map
                }
            };
            if let Some(exp) = exp {
                claims.insert("exp".into(), exp.into());
            }
            let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
            let body = URL_SAFE_NO_PAD.encode(serde_json::Value::Object(claims).to_string());
            let token = format!("{header}.{body}.c2lnbmF0dXJl");
            if let Ok(parsed) = Claims::from_jwt(&token) && let Some(exp) = exp {
                prop_assert_eq!(parsed.expires_at, Some(exp));
            }
        }
    }
}
