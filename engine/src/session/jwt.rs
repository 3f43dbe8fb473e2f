//! Verifying connection tokens (JWT, RFC 7519) with the `jsonwebtoken`
//! crate: the keys, and the checks made on every token.
//!
//! Keys come from one of three sources: an HMAC secret (HS256/384/512), a
//! PEM public key (RSA: RS256/384/512; EC: ES256/384; Ed25519: EdDSA), or a
//! JWKS document whose keys are picked by the token's `kid`. A token's
//! `alg` must be one its key's type allows: `alg: none`, or an HMAC
//! algorithm against a public key (algorithm confusion), fails. The keys
//! sit behind an `Arc` that [`Auth::reload`] swaps (SIGHUP); workers take
//! a reference for each verification and never wait for a reload.
//!
//! Tokens are never logged: errors name the check that failed, not the
//! token.

use super::permissions::Grant;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Largest token accepted, in bytes. In the opening handshake the request
/// head limit (8 KiB, else 431) enforces it first.
pub const MAX_TOKEN: usize = 8 * 1024;

/// Longest user id (`sub`), in bytes.
pub const MAX_USER_ID: usize = 128;

const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA: [Algorithm; 3] = [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512];

/// Where the verification keys come from.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// A file holding an HMAC secret (trailing whitespace is ignored).
    HmacSecret(PathBuf),
    /// A PEM file holding an RSA, EC (P-256, P-384) or Ed25519 public key.
    PublicKey(PathBuf),
    /// A JWKS file (RFC 7517): keys selected by the token's `kid`.
    Jwks(PathBuf),
}

/// How tokens are checked.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The keys.
    pub keys: KeySource,
    /// Accepted `aud` values; when set, a token must carry one of them.
    pub audience: Vec<String>,
    /// Accepted `iss` values; when set, a token must carry one of them.
    pub issuer: Vec<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in whole seconds.
    pub leeway: Duration,
    /// Connections without a token are let in, anonymous.
    pub allow_anonymous: bool,
}

/// A verified token: what the connection is allowed.
#[derive(Debug)]
pub struct Identity {
    /// `sub`: the user id; `None` for an anonymous token.
    pub user: Option<Box<str>>,
    /// `topics`, `publish` and `info`.
    pub grant: Grant,
    /// When the connection must close: `exp` plus the leeway, in Unix
    /// seconds; `None` for a token without `exp`.
    pub expires: Option<u64>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    iat: Option<u64>,
    exp: Option<u64>,
    topics: Option<Vec<String>>,
    publish: Option<Vec<String>>,
    info: Option<Box<RawValue>>,
}

struct Key {
    decoding: DecodingKey,
    validation: Validation,
}

/// One generation of keys: a single key (secret, PEM) or keys by `kid`.
struct Keys {
    single: Option<Key>,
    by_kid: HashMap<String, Key>,
}

/// Token verification, shared by every worker.
pub struct Auth {
    settings: Settings,
    keys: RwLock<Arc<Keys>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Auth({:?})", self.settings.keys)
    }
}

impl Auth {
    /// Loads the keys.
    ///
    /// # Errors
    /// A message naming the file: unreadable, empty, not a PEM public key
    /// of a supported type, or not a JWKS whose keys all have a usable
    /// type and (when there are several) a `kid`.
    pub fn new(settings: Settings) -> Result<Self, String> {
        let keys = load(&settings)?;
        Ok(Self {
            settings,
            keys: RwLock::new(Arc::new(keys)),
        })
    }

    /// Reads the key file again and, if it loads, swaps the keys in for
    /// the next verifications. Returns a description for the log.
    ///
    /// # Errors
    /// As [`Auth::new`]; the previous keys then stay in use.
    pub fn reload(&self) -> Result<String, String> {
        let keys = Arc::new(load(&self.settings)?);
        *self.keys.write().expect("keys lock") = keys;
        Ok(self.describe())
    }

    /// What the keys are, for the startup log (no key material).
    pub fn describe(&self) -> String {
        let keys = self.keys.read().expect("keys lock").clone();
        match &self.settings.keys {
            KeySource::HmacSecret(p) => format!("HMAC secret from {}", p.display()),
            KeySource::PublicKey(p) => format!("public key from {}", p.display()),
            KeySource::Jwks(p) => format!(
                "JWKS {} ({} keys)",
                p.display(),
                keys.by_kid.len() + usize::from(keys.single.is_some())
            ),
        }
    }

    /// Whether connections without a token are let in.
    pub fn allow_anonymous(&self) -> bool {
        self.settings.allow_anonymous
    }

    /// Verifies `token` (the compact JWS form) and reads its claims.
    ///
    /// # Errors
    /// Which check failed: size, format, unknown `kid`, algorithm, the
    /// signature, `exp`, `nbf`, `iat`, `aud`, `iss`, or a claim ringcast
    /// reads (`sub` empty or over [`MAX_USER_ID`] bytes, a bad topic
    /// pattern, `info` over 1 KiB).
    pub fn verify(&self, token: &str) -> Result<Identity, &'static str> {
        if token.len() > MAX_TOKEN {
            return Err("token over 8 KiB");
        }
        // An unknown `alg`, `none` included, fails here.
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| "malformed header or unknown alg")?;
        let keys = self.keys.read().expect("keys lock").clone();
        let key = match (&keys.single, &header.kid) {
            (Some(key), _) => key,
            (None, Some(kid)) => keys.by_kid.get(kid).ok_or("no key with this kid")?,
            (None, None) => return Err("token without a kid"),
        };
        let claims = jsonwebtoken::decode::<Claims>(token, &key.decoding, &key.validation)
            .map_err(|e| reason(e.kind()))?
            .claims;
        let leeway = self.settings.leeway.as_secs();
        if claims
            .iat
            .is_some_and(|iat| iat > unix_now().saturating_add(leeway))
        {
            return Err("issued in the future (iat)");
        }
        if claims
            .sub
            .as_ref()
            .is_some_and(|s| s.is_empty() || s.len() > MAX_USER_ID)
        {
            return Err("sub empty or over 128 bytes");
        }
        let info = claims.info.as_deref().map(RawValue::get);
        Ok(Identity {
            user: claims.sub.map(String::into_boxed_str),
            grant: Grant::new(claims.topics, claims.publish, info)?,
            expires: claims.exp.map(|exp| exp.saturating_add(leeway)),
        })
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "expired (exp)",
        ErrorKind::ImmatureSignature => "not yet valid (nbf)",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "algorithm not allowed for this key"
        }
        ErrorKind::InvalidAudience => "wrong audience (aud)",
        ErrorKind::InvalidIssuer => "wrong issuer (iss)",
        ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
        ErrorKind::InvalidClaimFormat(_) | ErrorKind::Json(_) => "claims are not as expected",
        _ => "malformed token",
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.trim_ascii().is_empty() {
        return Err(format!("{}: empty", path.display()));
    }
    Ok(bytes)
}

fn load(settings: &Settings) -> Result<Keys, String> {
    let key = |decoding, algorithms: &[Algorithm]| Key {
        decoding,
        validation: validation(settings, algorithms),
    };
    let single = |k| {
        Ok(Keys {
            single: Some(k),
            by_kid: HashMap::new(),
        })
    };
    match &settings.keys {
        KeySource::HmacSecret(path) => {
            let secret = read(path)?;
            single(key(
                DecodingKey::from_secret(secret.trim_ascii_end()),
                &HMAC,
            ))
        }
        KeySource::PublicKey(path) => {
            let pem = read(path)?;
            let (decoding, algorithms) = public_key(&pem).ok_or_else(|| {
                format!(
                    "{}: not an RSA, EC or Ed25519 public key in PEM",
                    path.display()
                )
            })?;
            single(key(decoding, algorithms))
        }
        KeySource::Jwks(path) => {
            let fail = |why: String| format!("{}: {why}", path.display());
            let set: JwkSet =
                serde_json::from_slice(&read(path)?).map_err(|e| fail(e.to_string()))?;
            let mut by_kid = HashMap::new();
            for jwk in &set.keys {
                let decoding = DecodingKey::from_jwk(jwk).map_err(|e| fail(e.to_string()))?;
                let algorithms = jwk_algorithms(jwk).map_err(fail)?;
                let key = key(decoding, &algorithms);
                match (&jwk.common.key_id, set.keys.len()) {
                    (Some(kid), _) => {
                        if by_kid.insert(kid.clone(), key).is_some() {
                            return Err(fail(format!("kid {kid:?} appears twice")));
                        }
                    }
                    (None, 1) => return single(key),
                    (None, _) => {
                        return Err(fail("a key without a kid in a set of several".into()))
                    }
                }
            }
            if by_kid.is_empty() {
                return Err(fail("no keys".into()));
            }
            Ok(Keys {
                single: None,
                by_kid,
            })
        }
    }
}

/// A PEM public key and the algorithms its type allows.
fn public_key(pem: &[u8]) -> Option<(DecodingKey, &'static [Algorithm])> {
    const EC: [Algorithm; 2] = [Algorithm::ES256, Algorithm::ES384];
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Some((key, &RSA));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Some((key, &EC));
    }
    DecodingKey::from_ed_pem(pem)
        .ok()
        .map(|key| (key, &[Algorithm::EdDSA][..]))
}

/// The algorithms a JWK may verify: its `alg` if given, else those of its
/// key type and curve.
fn jwk_algorithms(jwk: &Jwk) -> Result<Vec<Algorithm>, String> {
    if let Some(alg) = jwk.common.key_algorithm {
        return Algorithm::from_str(&alg.to_string())
            .map(|a| vec![a])
            .map_err(|_| format!("alg {alg} is not a signature algorithm"));
    }
    Ok(match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA.to_vec(),
        AlgorithmParameters::OctetKey(_) => HMAC.to_vec(),
        AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            ref other => return Err(format!("unsupported curve {other:?}")),
        },
    })
}

fn validation(settings: &Settings, algorithms: &[Algorithm]) -> Validation {
    let mut v = Validation::new(algorithms[0]);
    v.algorithms = algorithms.to_vec();
    v.leeway = settings.leeway.as_secs();
    v.validate_nbf = true;
    // A token without exp does not expire; aud and iss are required
    // when configured.
    let mut required = HashSet::new();
    if settings.audience.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&settings.audience);
        required.insert("aud".to_owned());
    }
    if !settings.issuer.is_empty() {
        v.set_issuer(&settings.issuer);
        required.insert("iss".to_owned());
    }
    v.required_spec_claims = required;
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAxxK8bKdxyxfdzAgk14nn
tV+AypCE9Gqn9wyIKWC9IzZxRD6C+sWPdxKg0OaOibJrSl7aljadd8cl0bsr9Ujg
hPc8XpcHBFq2xv2jF/IGDvDJGoKbXTn9/iV15L7VkiNf5BoQD5x2GCVI/tGTS4er
QwwABbYqhqyBmlknhsZ60t0/4dLDGbLfELKoqgY7JVp7aBwYwEgHJiQvykHnVRgc
yaS2ANS3kgu+4ZulQN6j9JjJBLO3wyXLvkTJprSUe/cDefbVOI8Ve++iBoHOipvo
vqxXvhDVIkqkXRZgwI0A9FFSBRNvS6NOmjWRJxiJwQ6+eZAKZJoDniMK8qt6uVlY
EQIDAQAB
-----END PUBLIC KEY-----
";
    const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEuJFuMPIcTnXCHwdS2e5mbv8q1nao
oZmctP8UEJmPgIFTH4WitHw2BoH9pWQAac911/6N0iNiNFSKdeakh8+88g==
-----END PUBLIC KEY-----
";
    const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAzIsUDy8FuoJHJxQEJ+dRMqVvOV9najz51oWiIh+8pu4=
-----END PUBLIC KEY-----
";

    fn file(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("ringcast-jwt-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn settings(keys: KeySource) -> Settings {
        Settings {
            keys,
            audience: vec!["ringcast".into()],
            issuer: Vec::new(),
            leeway: Duration::from_secs(5),
            allow_anonymous: false,
        }
    }

    fn hs256(claims: serde_json::Value, secret: &[u8]) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn hmac_tokens_are_checked_claim_by_claim() {
        let auth = Auth::new(settings(KeySource::HmacSecret(file("s", "sekrit\n")))).unwrap();
        let now = unix_now();
        let good = json!({"sub": "42", "aud": "ringcast", "exp": now + 60, "topics": ["a.*"]});
        let id = auth.verify(&hs256(good.clone(), b"sekrit")).unwrap();
        assert_eq!(id.user.as_deref(), Some("42"));
        assert_eq!(id.expires, Some(now + 65));
        let cases = [
            (json!({"aud": "ringcast", "exp": now - 60}), "expired (exp)"),
            (
                json!({"aud": "ringcast", "nbf": now + 60}),
                "not yet valid (nbf)",
            ),
            (json!({"aud": "other"}), "wrong audience (aud)"),
            (json!({}), "a required claim is missing"),
            (
                json!({"aud": "ringcast", "iat": now + 60}),
                "issued in the future (iat)",
            ),
            (
                json!({"aud": "ringcast", "sub": ""}),
                "sub empty or over 128 bytes",
            ),
            (
                json!({"aud": "ringcast", "topics": ["a b"]}),
                "bad pattern in the topics claim",
            ),
            (
                json!({"aud": "ringcast", "sub": 42}),
                "claims are not as expected",
            ),
        ];
        for (claims, why) in cases {
            assert_eq!(
                auth.verify(&hs256(claims.clone(), b"sekrit")).unwrap_err(),
                why,
                "{claims}"
            );
        }
        assert_eq!(
            auth.verify(&hs256(good.clone(), b"other")).unwrap_err(),
            "bad signature"
        );
        let token = hs256(good, b"sekrit");
        assert_eq!(
            auth.verify(&token[..token.len() - 3]).unwrap_err(),
            "bad signature"
        );
        assert_eq!(
            auth.verify("x.y").unwrap_err(),
            "malformed header or unknown alg"
        );
        // alg "none" is not an algorithm jsonwebtoken knows.
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none"}"#),
            b64(r#"{"aud":"ringcast"}"#)
        );
        assert_eq!(
            auth.verify(&none).unwrap_err(),
            "malformed header or unknown alg"
        );
    }

    fn b64(text: &str) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    #[test]
    fn a_public_key_takes_only_its_own_algorithms() {
        for (name, pem, alg) in [
            ("rsa", RSA_PUBLIC, Algorithm::RS256),
            ("ec", EC_PUBLIC, Algorithm::ES256),
            ("ed", ED_PUBLIC, Algorithm::EdDSA),
        ] {
            let auth = Auth::new(settings(KeySource::PublicKey(file(name, pem)))).unwrap();
            let keys = auth.keys.read().unwrap().clone();
            assert!(keys
                .single
                .as_ref()
                .unwrap()
                .validation
                .algorithms
                .contains(&alg));
            // The PEM text used as an HMAC secret: algorithm confusion.
            let confused = hs256(json!({"aud": "ringcast"}), pem.as_bytes());
            assert_eq!(
                auth.verify(&confused).unwrap_err(),
                "algorithm not allowed for this key",
                "{name}"
            );
        }
        let bad = Auth::new(settings(KeySource::PublicKey(file("bad", "not a key"))));
        assert!(bad
            .unwrap_err()
            .contains("not an RSA, EC or Ed25519 public key"));
    }

    #[test]
    fn jwks_keys_go_by_kid_and_reload_keeps_the_old_set_on_error() {
        let jwks = |keys: serde_json::Value| json!({ "keys": keys }).to_string();
        let oct = |kid: &str, secret: &str| json!({"kty": "oct", "kid": kid, "k": b64(secret)});
        let path = file("jwks", &jwks(json!([oct("a", "one")])));
        let auth = Auth::new(settings(KeySource::Jwks(path.clone()))).unwrap();
        let token = |kid: &str, secret: &[u8]| {
            let header = Header {
                kid: Some(kid.into()),
                ..Header::default()
            };
            let claims = json!({"aud": "ringcast"});
            encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap()
        };
        assert!(auth.verify(&token("a", b"one")).is_ok());
        assert_eq!(
            auth.verify(&token("b", b"two")).unwrap_err(),
            "no key with this kid"
        );
        std::fs::write(&path, jwks(json!([oct("a", "one"), oct("b", "two")]))).unwrap();
        assert_eq!(
            auth.reload().unwrap(),
            format!("JWKS {} (2 keys)", path.display())
        );
        assert!(auth.verify(&token("b", b"two")).is_ok());
        std::fs::write(&path, "{").unwrap();
        assert!(auth.reload().is_err());
        assert!(auth.verify(&token("b", b"two")).is_ok(), "old keys kept");
    }
}
