//! The emulator's tokens: HS256 JWTs with the claims of the real API
//! (PROTOCOL §2.1) plus a serial number (`jti`) so that every token issued so
//! far can be revoked at once. Test-only signing: never use for real secrets.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct TokenClaims {
    /// The user id, as the real API's `ClaimTypes.NameIdentifier`.
    pub nameid: String,
    /// The email, as the real API's `ClaimTypes.Name`.
    pub unique_name: String,
    pub role: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// The issue serial: tokens below the revocation mark are refused.
    pub jti: String,
}

impl TokenClaims {
    pub fn serial(&self) -> Option<u64> {
        self.jti.parse().ok()
    }
}

pub(super) fn issue(
    secret: &[u8],
    claims: &TokenClaims,
) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
}

/// The claims of a token signed with `secret` that has not run out at `now_secs`.
/// A token whose `exp` is `now_secs` or earlier is expired (no leeway: the
/// emulator must be able to hand out tokens that are dead on arrival).
pub(super) fn verify(secret: &[u8], token: &str, now_secs: u64) -> Option<TokenClaims> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.leeway = 0;
    let data =
        jsonwebtoken::decode::<TokenClaims>(token, &DecodingKey::from_secret(secret), &validation)
            .ok()?;
    (data.claims.exp > now_secs).then_some(data.claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> TokenClaims {
        TokenClaims {
            nameid: "1".into(),
            unique_name: "a@b.c".into(),
            role: "ApiAdmin".into(),
            exp,
            jti: "7".into(),
        }
    }

    #[test]
    fn a_token_verifies_with_its_secret_until_it_runs_out() {
        let token = issue(b"secret", &claims(1000)).unwrap();
        assert_eq!(verify(b"secret", &token, 999), Some(claims(1000)));
        assert_eq!(verify(b"secret", &token, 1000), None);
        assert_eq!(verify(b"other", &token, 999), None);
        assert_eq!(claims(1).serial(), Some(7));
    }

    #[test]
    fn a_tampered_or_garbage_token_is_refused() {
        let token = issue(b"secret", &claims(1000)).unwrap();
        // Change a character in the middle of the signature: every bit there counts.
        let mut tampered = token.clone().into_bytes();
        let at = tampered.len() - 10;
        tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(verify(b"secret", &tampered, 0), None);
        assert_eq!(verify(b"secret", "not.a.jwt", 0), None);
    }

    #[test]
    fn the_loader_reads_the_emulator_claims() {
        let token = issue(b"secret", &claims(1000)).unwrap();
        let read = crate::domain::token::Claims::from_jwt(&token).unwrap();
        assert_eq!(read.email.as_deref(), Some("a@b.c"));
        assert_eq!(read.user_id.as_deref(), Some("1"));
        assert_eq!(read.expires_at, Some(1000));
    }
}
