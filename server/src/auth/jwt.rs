//! Which tokens Authenticate hands out (`--auth-token`, etcd's flag): etcd's default
//! simple tokens (storage's auth/tokens.rs), or JWTs
//! (`jwt,pub-key=FILE,priv-key=FILE,sign-method=RS256,ttl=5m`): a signed claim of the
//! user and the auth revision it authenticated at, with etcd's claim names, that any
//! member holding the public key checks by signature alone.
//!
//! Owns parsing the option, signing and checking. It never keeps a token: a JWT is
//! valid until it expires, and an auth change makes it stale through its revision
//! ("revision of auth store is old"), as in etcd.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::errors::ApiError;

/// etcd's default JWT lifetime.
const DEFAULT_TTL: Duration = Duration::from_secs(300);

pub enum TokenKind {
    Simple,
    Jwt(Jwt),
}

pub struct Jwt {
    algorithm: Algorithm,
    /// None on a member given only the public key: it checks tokens, never signs one.
    signing: Option<EncodingKey>,
    checking: DecodingKey,
    ttl: Duration,
}

/// etcd's claims: the user, the auth revision, the expiry in Unix seconds.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

impl TokenKind {
    /// `--auth-token`: `simple`, or `jwt` and its options.
    pub fn parse(spec: &str) -> Result<TokenKind, String> {
        let mut parts = spec.split(',');
        match parts.next() {
            Some("simple") if parts.next().is_none() => Ok(TokenKind::Simple),
            Some("jwt") => Jwt::from_options(parts).map(TokenKind::Jwt),
            _ => Err(format!(
                "--auth-token {spec:?}: want simple or jwt,pub-key=FILE,priv-key=FILE,sign-method=METHOD[,ttl=DURATION]"
            )),
        }
    }
}

impl Jwt {
    fn from_options<'a>(options: impl Iterator<Item = &'a str>) -> Result<Jwt, String> {
        let (mut public, mut private, mut method, mut ttl) = (None, None, None, DEFAULT_TTL);
        for option in options {
            let (name, value) = option
                .split_once('=')
                .ok_or_else(|| format!("--auth-token: {option:?} is not name=value"))?;
            let read = |file: &str| {
                std::fs::read(file).map_err(|e| format!("--auth-token {name}={file}: {e}"))
            };
            match name {
                "pub-key" => public = Some(read(value)?),
                "priv-key" => private = Some(read(value)?),
                "sign-method" => method = Some(algorithm_of(value)?),
                "ttl" => ttl = parse_duration(value)?,
                _ => return Err(format!("--auth-token: unknown option {name:?}")),
            }
        }
        let algorithm = method.ok_or("--auth-token jwt: sign-method is missing")?;
        let (signing, checking) = keys(algorithm, public.as_deref(), private.as_deref())?;
        Ok(Jwt {
            algorithm,
            signing,
            checking,
            ttl,
        })
    }

    /// A token for `user` as of auth revision `revision`.
    pub fn sign(&self, user: &str, revision: u64) -> Result<String, ApiError> {
        let key = self.signing.as_ref().ok_or_else(|| {
            ApiError::Unknown("auth: token signing attempted with verify-only key".into())
        })?;
        let now_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            username: user.to_string(),
            revision,
            exp: now_s + self.ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key)
            .map_err(|e| ApiError::Internal(format!("jwt: {e}")))
    }

    /// The user and auth revision of a valid, unexpired token signed with our key.
    pub fn check(&self, token: &str) -> Option<(String, u64)> {
        let mut validation = Validation::new(self.algorithm);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.checking, &validation).ok()?;
        Some((data.claims.username, data.claims.revision))
    }
}

fn algorithm_of(method: &str) -> Result<Algorithm, String> {
    Ok(match method {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        _ => {
            return Err(format!(
                "--auth-token: sign-method {method:?} is not supported"
            ))
        }
    })
}

/// The signing key (if a private key was given) and the checking key. HMAC methods
/// use the private key file as the shared secret for both; the others need the public
/// key to check.
fn keys(
    algorithm: Algorithm,
    public: Option<&[u8]>,
    private: Option<&[u8]>,
) -> Result<(Option<EncodingKey>, DecodingKey), String> {
    let bad = |e: jsonwebtoken::errors::Error| format!("--auth-token: {e}");
    match algorithm {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let secret = private.ok_or("--auth-token: an HMAC sign-method needs priv-key")?;
            Ok((
                Some(EncodingKey::from_secret(secret)),
                DecodingKey::from_secret(secret),
            ))
        }
        Algorithm::ES256 | Algorithm::ES384 => {
            let public = public.ok_or("--auth-token: an ECDSA sign-method needs pub-key")?;
            let signing = private
                .map(|p| EncodingKey::from_ec_pem(p).map_err(bad))
                .transpose()?;
            Ok((signing, DecodingKey::from_ec_pem(public).map_err(bad)?))
        }
        _ => {
            let public = public.ok_or("--auth-token: an RSA sign-method needs pub-key")?;
            let signing = private
                .map(|p| EncodingKey::from_rsa_pem(p).map_err(bad))
                .transpose()?;
            Ok((signing, DecodingKey::from_rsa_pem(public).map_err(bad)?))
        }
    }
}

/// A Go duration as etcd's `ttl` option takes it: `300s`, `5m`, `1h30m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("--auth-token: ttl {text:?} is not a duration such as 5m or 1h30m");
    let mut total_ms: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        total_ms = n
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(bad)?;
        rest = &rest[unit_len..];
    }
    if total_ms == 0 {
        return Err(bad());
    }
    Ok(Duration::from_millis(total_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_token_names_its_user_and_revision_until_it_expires() {
        let dir = tempfile::tempdir().expect("temp dir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"a shared secret of the cluster").unwrap();
        let spec = format!("jwt,priv-key={},sign-method=HS256,ttl=1m", secret.display());
        let TokenKind::Jwt(jwt) = TokenKind::parse(&spec).expect("parses") else {
            panic!("not jwt")
        };
        let token = jwt.sign("alice", 7).expect("signs");
        assert_eq!(jwt.check(&token), Some(("alice".to_string(), 7)));
        let mut forged = token.clone();
        forged.pop();
        assert_eq!(jwt.check(&forged), None, "a changed signature");
        let expired = Jwt {
            ttl: Duration::ZERO,
            ..jwt
        };
        let token = expired.sign("alice", 7).expect("signs");
        std::thread::sleep(Duration::from_millis(1_100));
        assert_eq!(expired.check(&token), None, "expired");
    }

    #[test]
    fn bad_options_are_refused_with_what_is_wrong() {
        for (spec, want) in [
            ("jwt", "sign-method is missing"),
            ("jwt,sign-method=ES512", "not supported"),
            ("jwt,sign-method=RS256", "needs pub-key"),
            ("jwt,sign-method=HS256", "needs priv-key"),
            ("jwt,ttl", "not name=value"),
            ("jwt,colour=red", "unknown option"),
            ("simple,ttl=5m", "want simple or jwt"),
            ("jwt,pub-key=/nonexistent,sign-method=RS256", "/nonexistent"),
        ] {
            let err = TokenKind::parse(spec).err().expect(spec);
            assert!(err.contains(want), "{spec}: {err}");
        }
        assert!(matches!(TokenKind::parse("simple"), Ok(TokenKind::Simple)));
    }

    #[test]
    fn ttls_read_as_go_durations() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1_500)));
        for bad in ["", "5", "m", "0s", "5 m", "5d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
