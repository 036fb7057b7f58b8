//! Who is calling: a bearer token checked by the gateway's own JWT issuer (signature against
//! a JWKS, issuer, audience, expiry) or by the apiserver's `TokenReview` (ServiceAccount tokens
//! and whatever else the apiserver accepts). Results are cached briefly by token hash.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use serde_json::Value;
use tokio::sync::RwLock;

use super::cache::TtlCache;
use super::turns::Turns;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// User name as RBAC sees it.
    pub user: String,
    /// Groups as RBAC sees them.
    pub groups: Vec<String>,
    /// The namespace named by the configured token claim (JWT only), for routing.
    pub namespace_claim: Option<String>,
}

/// Why a caller is not authenticated; each becomes UNAUTHENTICATED with this message (except
/// `Unavailable`, which is UNAVAILABLE: the caller may be fine).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// No bearer token.
    #[error("no credential: connect with ;token=<your token> (sent as authorization: Bearer)")]
    Missing,
    /// The token's time is over.
    #[error("the token has expired{0}")]
    Expired(String),
    /// Made for another audience.
    #[error("wrong audience: the token is for {found}, this gateway accepts {expected}")]
    WrongAudience {
        /// The token's `aud`.
        found: String,
        /// The audience the gateway accepts.
        expected: String,
    },
    /// Issued by an issuer the gateway does not trust.
    #[error("unknown issuer {0:?}: this gateway trusts {1}")]
    UnknownIssuer(String, String),
    /// The signature does not verify against the issuer's keys.
    #[error("the token's signature does not verify against the issuer's keys")]
    BadSignature,
    /// Anything else the checks refused, with their words.
    #[error("the token was refused: {0}")]
    Refused(String),
    /// The apiserver could not be asked.
    #[error("authentication is unavailable right now: {0}")]
    Unavailable(String),
}

impl AuthnError {
    /// A short label for metrics and audit lines.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Expired(_) => "expired",
            Self::WrongAudience { .. } => "wrong_audience",
            Self::UnknownIssuer(..) => "unknown_issuer",
            Self::BadSignature => "bad_signature",
            Self::Refused(_) => "refused",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

/// A JWT issuer the gateway validates itself.
pub struct JwtIssuer {
    /// The `iss` it signs with.
    pub issuer: String,
    /// The `aud` tokens must carry.
    pub audience: String,
    /// Claim with the user name (e.g. `sub`, `email`).
    pub username_claim: String,
    /// Claim with the groups (a list of strings).
    pub groups_claim: String,
    /// Put before user names, so they cannot collide with Kubernetes users.
    pub username_prefix: String,
    /// Put before group names.
    pub groups_prefix: String,
    /// Claim whose value names the caller's namespace (for routing), if any.
    pub namespace_claim: Option<String>,
    /// The issuer's signing keys, refreshed by [`super::keys`].
    pub keys: Arc<RwLock<JwkSet>>,
}

/// Checks bearer tokens. Answers are remembered by the token's hash: acceptances and refusals
/// apart, so a flood of bad tokens never pushes out the callers who are let in; TokenReviews in
/// flight are bounded, so unauthenticated callers cannot turn the gateway into a load on the
/// apiserver.
pub struct Authenticator {
    client: Option<kube::Client>,
    review_audience: Option<String>,
    jwt: Option<JwtIssuer>,
    accepted: TtlCache<[u8; 32], Identity>,
    refused: TtlCache<[u8; 32], AuthnError>,
    reviews: Turns,
}

/// Longest a positive answer is reused (never past the token's own expiry).
const TRUST_FOR: Duration = Duration::from_secs(30);
/// Longest a refusal is reused (short: a fixed token is accepted soon).
const REFUSE_FOR: Duration = Duration::from_secs(3);
/// Longest token read: service-account and OIDC tokens are a few kilobytes.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Answers remembered, of each kind.
const REMEMBERED: usize = 10_000;

impl Authenticator {
    /// TokenReview through `client` for `review_audience` (when given), and the gateway's own
    /// JWT issuer (when given), tried in that order of fit: a JWT from the configured issuer is
    /// checked by the gateway, every other token by the apiserver.
    pub fn new(
        client: Option<kube::Client>,
        review_audience: Option<String>,
        jwt: Option<JwtIssuer>,
    ) -> Self {
        Self {
            client,
            review_audience,
            jwt,
            accepted: TtlCache::new(REMEMBERED),
            refused: TtlCache::new(REMEMBERED),
            reviews: Turns::new("token reviews"),
        }
    }

    /// The caller behind an `authorization` header value.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Identity, AuthnError> {
        let token = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthnError::Missing)?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthnError::Refused(format!(
                "the token is {} bytes long; this gateway reads tokens of at most {MAX_TOKEN_BYTES}",
                token.len()
            )));
        }
        let key = super::cache::hash(token.as_bytes());
        if let Some(identity) = self.accepted.get(&key) {
            return Ok(identity);
        }
        if let Some(refusal) = self.refused.get(&key) {
            return Err(refusal);
        }
        let unverified = unverified_claims(token);
        let answer = self.check(token, unverified.as_ref()).await;
        match &answer {
            Ok(identity) => {
                let ttl =
                    expiry_in(unverified.as_ref()).map_or(TRUST_FOR, |left| left.min(TRUST_FOR));
                if !ttl.is_zero() {
                    self.accepted.insert(key, identity.clone(), ttl);
                }
            }
            Err(AuthnError::Unavailable(_)) => {}
            Err(refusal) => self.refused.insert(key, refusal.clone(), REFUSE_FOR),
        }
        answer
    }

    async fn check(&self, token: &str, unverified: Option<&Value>) -> Result<Identity, AuthnError> {
        let issuer = unverified
            .and_then(|c| c.get("iss"))
            .and_then(Value::as_str);
        if let (Some(jwt), Some(issuer)) = (&self.jwt, issuer)
            && issuer == jwt.issuer
        {
            return jwt.validate(token).await;
        }
        match (&self.client, &self.review_audience) {
            (Some(client), Some(audience)) => {
                let _turn = self.reviews.take().await.map_err(AuthnError::Unavailable)?;
                review(client, token, audience, unverified).await
            }
            _ => Err(match (&self.jwt, issuer) {
                (Some(jwt), Some(issuer)) => {
                    AuthnError::UnknownIssuer(issuer.into(), jwt.issuer.clone())
                }
                (Some(jwt), None) => AuthnError::Refused(format!(
                    "not a JWT from {}; Kubernetes tokens are not accepted by this gateway",
                    jwt.issuer
                )),
                (None, _) => AuthnError::Refused("no authenticator is configured".into()),
            }),
        }
    }
}

/// The payload of a JWT-shaped token, unverified (only to pick a checker and a cache time).
fn unverified_claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn expiry_in(claims: Option<&Value>) -> Option<Duration> {
    let exp = claims?.get("exp")?.as_u64()?;
    let now = jsonwebtoken::get_current_timestamp();
    Some(Duration::from_secs(exp.saturating_sub(now)))
}

fn audience_text(claims: Option<&Value>) -> String {
    match claims.and_then(|c| c.get("aud")) {
        Some(Value::String(aud)) => format!("{aud:?}"),
        Some(Value::Array(auds)) => {
            let list: Vec<String> = auds
                .iter()
                .filter_map(Value::as_str)
                .map(|a| format!("{a:?}"))
                .collect();
            list.join(", ")
        }
        _ => "no audience".into(),
    }
}

async fn review(
    client: &kube::Client,
    token: &str,
    audience: &str,
    unverified: Option<&Value>,
) -> Result<Identity, AuthnError> {
    let api: Api<TokenReview> = Api::all(client.clone());
    let request = TokenReview {
        spec: TokenReviewSpec {
            token: token.into(),
            audiences: Some(vec![audience.into()]),
        },
        ..TokenReview::default()
    };
    let answer = api
        .create(&PostParams::default(), &request)
        .await
        .map_err(|e| AuthnError::Unavailable(format!("TokenReview failed: {e}")))?;
    let status = answer.status.unwrap_or_default();
    if status.authenticated == Some(true)
        && let Some(user) = status.user.as_ref().and_then(|u| u.username.clone())
    {
        let groups = status.user.and_then(|u| u.groups).unwrap_or_default();
        return Ok(Identity {
            user,
            groups,
            namespace_claim: None,
        });
    }
    let error = status.error.unwrap_or_else(|| "not authenticated".into());
    let lower = error.to_lowercase();
    Err(if lower.contains("expired") {
        AuthnError::Expired(String::new())
    } else if lower.contains("audience") {
        AuthnError::WrongAudience {
            found: audience_text(unverified),
            expected: format!("{audience:?}"),
        }
    } else {
        AuthnError::Refused(error)
    })
}

impl JwtIssuer {
    async fn validate(&self, token: &str) -> Result<Identity, AuthnError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthnError::Refused(format!("not a readable JWT: {e}")))?;
        let keys = self.keys.read().await;
        let jwk = match &header.kid {
            Some(kid) => keys.find(kid),
            None => keys.keys.first(),
        }
        .ok_or_else(|| {
            AuthnError::Refused(format!(
                "no key {:?} among the issuer's {} keys",
                header.kid.as_deref().unwrap_or("(none)"),
                keys.keys.len()
            ))
        })?;
        key_signs_with(jwk, header.alg)?;
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| AuthnError::Refused(format!("the issuer's key is unusable: {e}")))?;
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = 30;
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| {
            let claims = unverified_claims(token);
            match e.kind() {
                ErrorKind::ExpiredSignature => AuthnError::Expired(
                    claims
                        .as_ref()
                        .and_then(|c| c.get("exp"))
                        .and_then(Value::as_i64)
                        .and_then(|exp| jiff::Timestamp::from_second(exp).ok())
                        .map(|at| format!(" (at {at})"))
                        .unwrap_or_default(),
                ),
                ErrorKind::InvalidAudience => AuthnError::WrongAudience {
                    found: audience_text(claims.as_ref()),
                    expected: format!("{:?}", self.audience),
                },
                ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                    AuthnError::BadSignature
                }
                _ => AuthnError::Refused(e.to_string()),
            }
        })?;
        let claims = data.claims;
        let user = claims
            .get(&self.username_claim)
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                AuthnError::Refused(format!("the token has no {:?} claim", self.username_claim))
            })?;
        let groups = match claims.get(&self.groups_claim) {
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .map(|g| format!("{}{g}", self.groups_prefix))
                .collect(),
            Some(Value::String(one)) => vec![format!("{}{one}", self.groups_prefix)],
            _ => Vec::new(),
        };
        let namespace_claim = self
            .namespace_claim
            .as_ref()
            .and_then(|name| claims.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(Identity {
            user: format!("{}{user}", self.username_prefix),
            groups,
            namespace_claim,
        })
    }
}

/// The issuer's key may verify a token signed with `alg`: the key is not one for encryption,
/// and where it names its algorithm, the token's is that one (a token cannot choose how the
/// key is read).
fn key_signs_with(jwk: &Jwk, alg: Algorithm) -> Result<(), AuthnError> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err(AuthnError::BadSignature);
    }
    match jwk.common.key_algorithm {
        Some(named) if named.to_string() != format!("{alg:?}") => Err(AuthnError::BadSignature),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::turns::{REVIEWS_IN_FLIGHT, TURN_WAIT};
    use jsonwebtoken::{EncodingKey, Header};

    const SECRET: &[u8] = b"a test key that is long enough for HS256";

    fn issuer() -> JwtIssuer {
        let jwks: JwkSet = serde_json::from_value(serde_json::json!({"keys": [{
            "kty": "oct", "kid": "k1", "alg": "HS256",
            "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET)
        }]}))
        .expect("a JWKS");
        JwtIssuer {
            issuer: "https://idp.test".into(),
            audience: "spark".into(),
            username_claim: "sub".into(),
            groups_claim: "groups".into(),
            username_prefix: "oidc:".into(),
            groups_prefix: "oidc:".into(),
            namespace_claim: Some("team".into()),
            keys: Arc::new(RwLock::new(jwks)),
        }
    }

    fn token(claims: Value, key: &[u8]) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(key)).expect("signs")
    }

    fn claims(aud: &str, exp_from_now: i64) -> Value {
        let exp = jsonwebtoken::get_current_timestamp() as i64 + exp_from_now;
        serde_json::json!({"iss": "https://idp.test", "aud": aud, "exp": exp, "sub": "alice",
            "groups": ["analysts"], "team": "analytics"})
    }

    fn gateway() -> Authenticator {
        Authenticator::new(None, None, Some(issuer()))
    }

    #[tokio::test]
    async fn a_valid_jwt_names_the_user_groups_and_team_with_prefixes() {
        let id = gateway()
            .authenticate(Some(&format!(
                "Bearer {}",
                token(claims("spark", 600), SECRET)
            )))
            .await
            .expect("authenticated");
        assert_eq!(id.user, "oidc:alice");
        assert_eq!(id.groups, vec!["oidc:analysts".to_string()]);
        assert_eq!(id.namespace_claim.as_deref(), Some("analytics"));
    }

    #[tokio::test]
    async fn each_refusal_says_why() {
        let g = gateway();
        assert_eq!(g.authenticate(None).await, Err(AuthnError::Missing));
        let expired = g
            .authenticate(Some(&format!(
                "Bearer {}",
                token(claims("spark", -3600), SECRET)
            )))
            .await;
        assert!(
            matches!(expired, Err(AuthnError::Expired(_))),
            "{expired:?}"
        );
        let wrong = g
            .authenticate(Some(&format!(
                "Bearer {}",
                token(claims("other", 600), SECRET)
            )))
            .await
            .expect_err("wrong audience");
        assert!(wrong.to_string().contains("\"other\""), "{wrong}");
        let forged = g
            .authenticate(Some(&format!(
                "Bearer {}",
                token(
                    claims("spark", 600),
                    b"somebody else's key, long enough too"
                )
            )))
            .await;
        assert_eq!(forged, Err(AuthnError::BadSignature));
        let mut foreign = claims("spark", 600);
        foreign["iss"] = "https://evil.test".into();
        let unknown = g
            .authenticate(Some(&format!("Bearer {}", token(foreign, SECRET))))
            .await
            .expect_err("unknown issuer");
        assert_eq!(unknown.reason(), "unknown_issuer");
        assert!(unknown.to_string().contains("https://evil.test"));
    }

    /// A gateway that reviews tokens through a mock apiserver.
    fn reviewing() -> (Authenticator, crate::test_support::MockApiserver) {
        let (service, apiserver) = tower_test::mock::pair();
        let client = kube::Client::new(service, "default");
        let authn = Authenticator::new(Some(client), Some("spark".into()), None);
        (authn, apiserver)
    }

    /// Answers TokenReviews: `good` is alice, anything else is refused; counts reviews by token.
    async fn answer_reviews(
        mut apiserver: crate::test_support::MockApiserver,
        reviewed: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    ) {
        while let Some((request, send)) = apiserver.next_request().await {
            let review: TokenReview = crate::test_support::request_json(request).await;
            let token = review.spec.token;
            *reviewed.lock().unwrap().entry(token.clone()).or_default() += 1;
            let status = if token == "good" {
                serde_json::json!({"authenticated": true, "user": {"username": "alice"}})
            } else {
                serde_json::json!({"authenticated": false, "error": "invalid bearer token"})
            };
            let answer = serde_json::json!({"apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview", "spec": {}, "status": status});
            crate::test_support::respond_json(send, &answer);
        }
    }

    #[tokio::test]
    async fn a_flood_of_bad_tokens_never_pushes_out_a_caller_who_was_let_in() {
        let (authn, apiserver) = reviewing();
        let reviewed = Arc::default();
        tokio::spawn(answer_reviews(apiserver, Arc::clone(&reviewed)));
        let good = authn.authenticate(Some("Bearer good")).await;
        assert_eq!(good.map(|id| id.user), Ok("alice".to_string()));
        for i in 0..=REMEMBERED {
            let bad = authn.authenticate(Some(&format!("Bearer bad-{i}"))).await;
            assert!(matches!(bad, Err(AuthnError::Refused(_))), "{bad:?}");
        }
        let again = authn.authenticate(Some("Bearer good")).await;
        assert_eq!(again.map(|id| id.user), Ok("alice".to_string()));
        let reviewed = reviewed.lock().unwrap();
        assert_eq!(reviewed.get("good"), Some(&1), "alice was remembered");
        assert_eq!(reviewed.len(), REMEMBERED + 2);
    }

    #[tokio::test(start_paused = true)]
    async fn token_reviews_in_flight_are_bounded_and_a_caller_past_its_wait_is_told_to_retry() {
        let (authn, mut apiserver) = reviewing();
        let authn = Arc::new(authn);
        let callers: Vec<_> = (0..=REVIEWS_IN_FLIGHT)
            .map(|i| {
                let authn = Arc::clone(&authn);
                tokio::spawn(
                    async move { authn.authenticate(Some(&format!("Bearer token-{i}"))).await },
                )
            })
            .collect();
        // The apiserver takes the first reviews and answers none of them.
        let mut held = Vec::new();
        for _ in 0..REVIEWS_IN_FLIGHT {
            held.push(apiserver.next_request().await.expect("a review"));
        }
        // Time passes only while every task waits: the one caller without a turn gives up.
        tokio::time::sleep(TURN_WAIT + Duration::from_secs(1)).await;
        let (finished, waiting): (Vec<_>, Vec<_>) =
            callers.into_iter().partition(|c| c.is_finished());
        assert_eq!((finished.len(), waiting.len()), (1, REVIEWS_IN_FLIGHT));
        for caller in finished {
            let answer = caller.await.expect("the caller ran");
            assert!(
                matches!(&answer, Err(AuthnError::Unavailable(m)) if m.contains("token reviews are under way")),
                "{answer:?}"
            );
        }
        assert!(
            futures::FutureExt::now_or_never(apiserver.next_request()).is_none(),
            "no review beyond the bound reached the apiserver"
        );
        drop(held);
    }

    #[tokio::test]
    async fn an_oversized_token_is_refused_without_asking_the_apiserver() {
        let (authn, mut apiserver) = reviewing();
        let huge = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        let refused = authn.authenticate(Some(&huge)).await.expect_err("refused");
        assert!(refused.to_string().contains("at most 16384"), "{refused}");
        assert!(futures::FutureExt::now_or_never(apiserver.next_request()).is_none());
    }

    #[tokio::test]
    async fn a_token_cannot_choose_another_algorithm_than_its_key_names() {
        let mut header = Header::new(Algorithm::HS384);
        header.kid = Some("k1".into());
        let other_hash = jsonwebtoken::encode(
            &header,
            &claims("spark", 600),
            &EncodingKey::from_secret(SECRET),
        )
        .expect("signs");
        let answer = gateway()
            .authenticate(Some(&format!("Bearer {other_hash}")))
            .await;
        assert_eq!(answer, Err(AuthnError::BadSignature));

        let encryption_key: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "oct", "kid": "k1", "use": "enc",
            "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET)
        }))
        .expect("a JWK");
        assert_eq!(
            key_signs_with(&encryption_key, Algorithm::HS256),
            Err(AuthnError::BadSignature)
        );
    }
}
