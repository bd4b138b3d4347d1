//! Bearer tokens and their scopes on `/v1/*`.
//!
//! The configured tokens are kept only as SHA-256 digests. A presented token is hashed and
//! compared, in constant time, with every configured digest, with no early exit: the time an
//! answer takes depends neither on which token matched, nor on how many bytes of a guess were
//! right, nor on the lengths of the configured tokens (every comparison is of 32 bytes).
//!
//! No token configured means no authentication (every request is [`Caller::Anonymous`]).
//! A missing or unknown token is 401; a known token without the route's scope is 403, naming
//! the scope needed.

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::ApiError;
use crate::config::{Scope, TokenSetting};

/// Who sends a request, as far as authentication can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Caller {
    /// Authentication is off (no tokens configured).
    Anonymous,
    /// The configured token at this index of `http.tokens`.
    Token(usize),
}

fn bit(scope: Scope) -> u8 {
    match scope {
        Scope::Publish => 1,
        Scope::Read => 2,
        Scope::Admin => 4,
    }
}

/// One configured token: its digest and its scopes as bits.
struct Entry {
    digest: [u8; 32],
    scopes: u8,
}

/// The configured tokens, ready for constant-time checks.
pub struct Tokens {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("count", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// Digests the configured tokens.
    pub fn new(settings: &[TokenSetting]) -> Self {
        let entries = settings
            .iter()
            .map(|t| Entry {
                digest: Sha256::digest(t.token().expose().as_bytes()).into(),
                scopes: t.scopes().into_iter().fold(0, |acc, s| acc | bit(s)),
            })
            .collect();
        Self { entries }
    }

    /// Whether any token is configured (authentication is on).
    pub fn enabled(&self) -> bool {
        !self.entries.is_empty()
    }

    /// Checks the `Authorization` header for a token with `needed`.
    pub fn authorize(&self, header: Option<&str>, needed: Scope) -> Result<Caller, ApiError> {
        if self.entries.is_empty() {
            return Ok(Caller::Anonymous);
        }
        let presented = header
            .and_then(|h| {
                let (scheme, rest) = h.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(rest)
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = subtle::Choice::from(0);
        let mut scopes = 0u8;
        let mut index = 0u32;
        for (i, entry) in self.entries.iter().enumerate() {
            let eq = entry.digest.ct_eq(&digest);
            found |= eq;
            scopes |= u8::conditional_select(&0, &entry.scopes, eq);
            // Token lists are short; an index past u32 cannot be configured in practice.
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            index = u32::conditional_select(&index, &i, eq);
        }
        if !bool::from(found) {
            return Err(ApiError::Unauthorized);
        }
        if scopes & bit(needed) == 0 {
            return Err(ApiError::Forbidden(needed));
        }
        Ok(Caller::Token(index as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn tokens() -> Tokens {
        Tokens::new(&[
            TokenSetting::Plain(Secret::new("plain-token-0123456789")),
            TokenSetting::Scoped {
                token: Secret::new("publisher-token-0123456789"),
                scopes: vec![Scope::Publish],
            },
            TokenSetting::Scoped {
                token: Secret::new("operator-token-0123456789"),
                scopes: vec![Scope::Admin],
            },
            TokenSetting::Scoped {
                token: Secret::new("reader-token-0123456789"),
                scopes: vec![Scope::Read],
            },
        ])
    }

    #[test]
    fn no_tokens_means_anonymous_access() {
        let t = Tokens::new(&[]);
        assert!(!t.enabled());
        assert_eq!(
            t.authorize(None, Scope::Admin).ok(),
            Some(Caller::Anonymous)
        );
    }

    #[test]
    fn a_plain_token_has_every_scope() {
        let t = tokens();
        for scope in [Scope::Publish, Scope::Read, Scope::Admin] {
            assert_eq!(
                t.authorize(Some("Bearer plain-token-0123456789"), scope)
                    .ok(),
                Some(Caller::Token(0)),
                "{scope:?}"
            );
        }
    }

    #[test]
    fn scoped_tokens_get_only_their_scopes_and_admin_reads() {
        let t = tokens();
        let check = |token: &str, scope| t.authorize(Some(&format!("Bearer {token}")), scope);
        assert_eq!(
            check("publisher-token-0123456789", Scope::Publish).ok(),
            Some(Caller::Token(1))
        );
        for scope in [Scope::Read, Scope::Admin] {
            assert!(matches!(
                check("publisher-token-0123456789", scope),
                Err(ApiError::Forbidden(s)) if s == scope
            ));
        }
        assert_eq!(
            check("operator-token-0123456789", Scope::Admin).ok(),
            Some(Caller::Token(2))
        );
        assert_eq!(
            check("operator-token-0123456789", Scope::Read).ok(),
            Some(Caller::Token(2))
        );
        assert!(matches!(
            check("operator-token-0123456789", Scope::Publish),
            Err(ApiError::Forbidden(Scope::Publish))
        ));
        assert_eq!(
            check("reader-token-0123456789", Scope::Read).ok(),
            Some(Caller::Token(3))
        );
        assert!(matches!(
            check("reader-token-0123456789", Scope::Admin),
            Err(ApiError::Forbidden(Scope::Admin))
        ));
    }

    #[test]
    fn missing_malformed_or_unknown_tokens_are_unauthorized() {
        let t = tokens();
        for header in [
            None,
            Some(""),
            Some("Bearer"),
            Some("Bearer "),
            Some("Basic plain-token-0123456789"),
            Some("plain-token-0123456789"),
            Some("Bearer plain-token-012345678"),
            Some("Bearer plain-token-01234567890"),
            Some("Bearer PLAIN-TOKEN-0123456789"),
        ] {
            assert!(
                matches!(
                    t.authorize(header, Scope::Read),
                    Err(ApiError::Unauthorized)
                ),
                "{header:?}"
            );
        }
        // The scheme is case-insensitive (RFC 9110), the token is not.
        assert!(
            t.authorize(Some("bearer plain-token-0123456789"), Scope::Read)
                .is_ok()
        );
        assert!(
            t.authorize(Some("BEARER plain-token-0123456789"), Scope::Read)
                .is_ok()
        );
    }

    #[test]
    fn tokens_are_kept_only_as_digests() {
        let t = tokens();
        let printed = format!("{t:?}");
        assert!(!printed.contains("plain-token"), "{printed}");
        assert_ne!(
            t.entries[0].digest[..22],
            b"plain-token-0123456789"[..],
            "a digest, not the token"
        );
    }
}
