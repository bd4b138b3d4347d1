//! Bearer tokens and their scopes on `/v1/*`.
//!
//! The configured tokens are kept only as SHA-256 digests. A presented token is hashed and
//! compared, in constant time, with every configured digest, with no early exit: the time an
//! answer takes depends neither on which token matched, nor on how many bytes of a guess were
//! right, nor on the lengths of the configured tokens (every comparison is of 32 bytes).
//!
//! The operator console signs its users in with a token that has `admin`
//! ([`Tokens::sign_in`]): the browser then holds a session cookie, `expiry` and operator name
//! signed with HMAC-SHA256 under a key derived from that token. Any warren process configured
//! with the same token accepts it (no session store), and removing the token from the
//! settings ends its sessions. The cookie counts as credentials only on requests that also
//! carry `x-warren-console: 1` (see [`credentials`]): a header a cross-site form or link
//! cannot send, so the cookie cannot be ridden by another site (it is also `SameSite=Strict`).
//!
//! No token configured means no authentication (every request is [`Caller::Anonymous`]).
//! A missing or unknown token is 401; a known token without the route's scope is 403, naming
//! the scope needed.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use warp::Filter;

use super::ApiError;
use crate::config::{Scope, TokenSetting};

/// Who sends a request, as far as authentication can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Caller {
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

/// The console's session cookie.
pub(crate) const SESSION_COOKIE: &str = "warren_console";
/// The header that makes the session cookie count as credentials.
pub(crate) const CONSOLE_HEADER: &str = "x-warren-console";
/// The `Authorization` scheme [`credentials`] gives a console session.
const CONSOLE_SCHEME: &str = "console";
/// Longest operator name a session carries.
pub(crate) const MAX_OPERATOR: usize = 64;

/// One configured token: its digest, its scopes as bits, its holder's name and the key its
/// console sessions are signed with.
struct Entry {
    digest: [u8; 32],
    scopes: u8,
    name: String,
    session_key: [u8; 32],
}

/// The credentials of a request: its `Authorization` header or, on a console request (one
/// with `x-warren-console`), its session cookie, as `Console <cookie>`.
pub(crate) fn credentials()
-> impl Filter<Extract = (Option<String>,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(warp::header::optional::<String>(CONSOLE_HEADER))
        .and(warp::cookie::optional::<String>(SESSION_COOKIE))
        .map(
            |auth: Option<String>, console: Option<String>, cookie: Option<String>| {
                auth.or_else(|| console.and(cookie).map(|c| format!("Console {c}")))
            },
        )
}

/// A valid operator name: 1 to 64 characters, none of them control characters.
pub(crate) fn valid_operator(name: &str) -> bool {
    let n = name.chars().count();
    (1..=MAX_OPERATOR).contains(&n) && !name.chars().any(char::is_control)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The configured tokens, ready for constant-time checks.
pub(crate) struct Tokens {
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
    pub(crate) fn new(settings: &[TokenSetting]) -> Self {
        let entries = settings
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let token = t.token().expose().as_bytes();
                let mut key = Sha256::new();
                key.update(b"warren console session\0");
                key.update(token);
                Entry {
                    digest: Sha256::digest(token).into(),
                    scopes: t.scopes().into_iter().fold(0, |acc, s| acc | bit(s)),
                    name: t
                        .name()
                        .map_or_else(|| format!("token #{i}"), str::to_owned),
                    session_key: key.finalize().into(),
                }
            })
            .collect();
        Self { entries }
    }

    /// Whether any token is configured (authentication is on).
    pub(crate) fn enabled(&self) -> bool {
        !self.entries.is_empty()
    }

    /// Checks the `Authorization` header (or console session, see [`credentials`]) for a
    /// token with `needed`.
    pub(crate) fn authorize(
        &self,
        header: Option<&str>,
        needed: Scope,
    ) -> Result<Caller, ApiError> {
        if self.entries.is_empty() {
            return Ok(Caller::Anonymous);
        }
        if let Some(cookie) = header.and_then(console_cookie) {
            let (index, _) = self.session(cookie).ok_or(ApiError::Unauthorized)?;
            let scopes = self.entries.get(index).map_or(0, |e| e.scopes);
            if scopes & bit(needed) == 0 {
                return Err(ApiError::Forbidden(needed));
            }
            return Ok(Caller::Token(index));
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

    /// Who an authorized request comes from, as the audit log records it: `anonymous`, the
    /// token's name, or `<operator> (console, <token name>)`.
    pub(crate) fn actor(&self, caller: Caller, header: Option<&str>) -> String {
        let Caller::Token(index) = caller else {
            return "anonymous".to_owned();
        };
        let name = self
            .entries
            .get(index)
            .map_or("unknown token", |e| e.name.as_str());
        match header
            .and_then(console_cookie)
            .and_then(|c| self.session(c))
        {
            Some((_, operator)) => format!("{operator} (console, {name})"),
            None => name.to_owned(),
        }
    }

    /// Signs a console session for `token`, which must have `admin`, on behalf of `operator`
    /// (a name for the audit log; the token's name when empty), valid for `lifetime`. Returns
    /// the cookie value.
    pub(crate) fn sign_in(
        &self,
        token: &str,
        operator: &str,
        lifetime: std::time::Duration,
    ) -> Result<String, ApiError> {
        let caller = self.authorize(Some(&format!("Bearer {token}")), Scope::Admin)?;
        let Caller::Token(index) = caller else {
            return Err(ApiError::Unauthorized);
        };
        let operator = operator.trim();
        let operator = if operator.is_empty() {
            self.entries
                .get(index)
                .map_or("operator", |e| e.name.as_str())
        } else {
            operator
        };
        if !valid_operator(operator) {
            return Err(ApiError::InvalidQuery(format!(
                "the operator name must be 1 to {MAX_OPERATOR} printable characters"
            )));
        }
        let expires = now_secs().saturating_add(lifetime.as_secs());
        let payload = format!("{index}.{expires}.{}", hex::encode(operator.as_bytes()));
        let mac = self.mac(index, &payload).ok_or(ApiError::Unauthorized)?;
        Ok(format!("{payload}.{}", hex::encode(mac)))
    }

    /// The token index and operator of a valid, unexpired session cookie.
    fn session(&self, cookie: &str) -> Option<(usize, String)> {
        let (payload, mac) = cookie.rsplit_once('.')?;
        let mac = hex::decode(mac).ok()?;
        let mut parts = payload.splitn(3, '.');
        let index: usize = parts.next()?.parse().ok()?;
        let expires: u64 = parts.next()?.parse().ok()?;
        let operator = String::from_utf8(hex::decode(parts.next()?).ok()?).ok()?;
        let expected = self.mac(index, payload)?;
        if !bool::from(expected.as_slice().ct_eq(mac.as_slice())) || expires <= now_secs() {
            return None;
        }
        valid_operator(&operator).then_some((index, operator))
    }

    fn mac(&self, index: usize, payload: &str) -> Option<[u8; 32]> {
        let entry = self.entries.get(index)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&entry.session_key).ok()?;
        mac.update(payload.as_bytes());
        Some(mac.finalize().into_bytes().into())
    }

    /// Whether `cookie` is a valid console session (for the console's pages).
    pub(crate) fn session_valid(&self, cookie: Option<&str>) -> bool {
        !self.enabled() || cookie.is_some_and(|c| self.session(c).is_some())
    }
}

/// The cookie of a `Console <cookie>` credential.
fn console_cookie(header: &str) -> Option<&str> {
    let (scheme, rest) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case(CONSOLE_SCHEME)
        .then_some(rest.trim())
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
                name: None,
            },
            TokenSetting::Scoped {
                token: Secret::new("operator-token-0123456789"),
                scopes: vec![Scope::Admin],
                name: None,
            },
            TokenSetting::Scoped {
                token: Secret::new("reader-token-0123456789"),
                scopes: vec![Scope::Read],
                name: None,
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

    #[test]
    fn a_console_session_is_signed_for_an_admin_token_and_names_its_operator() {
        let t = tokens();
        let hour = std::time::Duration::from_secs(3_600);
        // Only a token with `admin` signs in.
        assert!(matches!(
            t.sign_in("reader-token-0123456789", "rita", hour),
            Err(ApiError::Forbidden(Scope::Admin))
        ));
        assert!(matches!(
            t.sign_in("wrong-token-0123456789", "eve", hour),
            Err(ApiError::Unauthorized)
        ));
        assert!(
            t.sign_in("operator-token-0123456789", "a\nb", hour)
                .is_err()
        );
        let cookie = t
            .sign_in("operator-token-0123456789", " alice ", hour)
            .expect("signed in");
        let header = format!("Console {cookie}");
        let caller = t.authorize(Some(&header), Scope::Admin).expect("valid");
        assert_eq!(caller, Caller::Token(2));
        assert_eq!(t.actor(caller, Some(&header)), "alice (console, token #2)");
        assert!(t.session_valid(Some(&cookie)));
        // The same cookie under other tokens (another deployment) is refused.
        let other = Tokens::new(&[TokenSetting::Plain(Secret::new("another-token-0123456789"))]);
        assert!(other.authorize(Some(&header), Scope::Read).is_err());
        // A changed index, expiry or name breaks the MAC.
        let (payload, mac) = cookie.rsplit_once('.').expect("mac");
        let mut parts: Vec<String> = payload.split('.').map(str::to_owned).collect();
        parts[1] = (parts[1].parse::<u64>().expect("expiry") + 3_600).to_string();
        let later = format!("{}.{mac}", parts.join("."));
        assert!(matches!(
            t.authorize(Some(&format!("Console {later}")), Scope::Read),
            Err(ApiError::Unauthorized)
        ));
        let as_plain = cookie.replacen('2', "0", 1);
        assert!(
            t.authorize(Some(&format!("Console {as_plain}")), Scope::Read)
                .is_err()
        );
        // An expired session is refused.
        let expired = t
            .sign_in(
                "operator-token-0123456789",
                "alice",
                std::time::Duration::ZERO,
            )
            .expect("signed");
        assert!(!t.session_valid(Some(&expired)));
        // Without a name the token's name is used; a plain bearer call is named by its token.
        let unnamed = t
            .sign_in("operator-token-0123456789", "", hour)
            .expect("signed");
        let h = format!("Console {unnamed}");
        let c = t.authorize(Some(&h), Scope::Read).expect("valid");
        assert_eq!(t.actor(c, Some(&h)), "token #2 (console, token #2)");
        let bearer = "Bearer operator-token-0123456789";
        let c = t.authorize(Some(bearer), Scope::Admin).expect("valid");
        assert_eq!(t.actor(c, Some(bearer)), "token #2");
    }
}
