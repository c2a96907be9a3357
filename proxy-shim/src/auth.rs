//! The authenticate/authorize step of the request pipeline (Kamailio's
//! `auth`/`auth_db` in the shim's terms): REGISTER is challenged with 401,
//! an out-of-dialog request whose From is one of our domains with 407.
//! The answer is checked (`digest`) against HA1s that locsvc derives from its
//! `subscriber` table, cached here for `credentials_cache_secs`; then the
//! authenticated user must be the one the request speaks for: the To AoR
//! of a REGISTER, the From of anything else (403 otherwise).
//!
//! Trusted sources and `auth = off` pass; so do in-dialog requests, ACK and
//! CANCEL (which cannot be challenged, RFC 3261 §22.1), OPTIONS to the shim
//! itself, and requests from foreign domains (calls into our domains from
//! elsewhere).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::digest::{self, Credentials, Digest, Ha1, Verdict};
use crate::locsvc_client::{LocsvcClient, LocsvcError};
use crate::metrics::Metrics;
use crate::settings::{AuthMode, Settings};
use crate::sip::{Request, UriView};

/// What the step decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Go on routing.
    Pass,
    /// Answer with this status, reason and headers.
    Answer(u16, &'static str, Vec<(&'static str, String)>),
}

/// Most credential entries cached; past it the cache starts over.
const CACHE_MAX: usize = 100_000;

/// A cached lookup: the HA1s (None: no such subscriber), when fetched, and
/// when a failed answer last forced a fetch (None: never).
type Cached = (Option<Ha1>, Instant, Option<Instant>);

/// A failed answer refetches its credentials at most this often per user
/// (a changed password works at once; guessing does not multiply lookups).
const REFETCH_EVERY: Duration = Duration::from_secs(1);

/// The authenticator of one shim.
pub struct Authenticator {
    digest: Digest,
    cache: Mutex<HashMap<(String, String, String), Cached>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

/// Where an answer's user is looked up, and how long a lookup is cached.
struct Who<'a> {
    domain: &'a str,
    realm: &'a str,
    ttl: Duration,
}

/// What checking a digest answer found.
enum Answered {
    /// The password is right (whose it is, is the caller's question).
    Proven,
    /// Right, but with a nonce past its lifetime.
    Stale,
    /// No such subscriber, or a wrong, forged or replayed answer.
    Refused,
    /// locsvc could not give the credentials.
    NoCredentials(LocsvcError),
}

/// Which challenge a request gets, if any.
struct Challenge {
    code: u16,
    reason: &'static str,
    /// Header the answer comes in, and the one the challenge goes out in.
    answer: &'static str,
    challenge: &'static str,
    /// The identity the request speaks for.
    identity: UriView,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Authenticator {
    /// An authenticator with `settings`' nonce secret and lifetime.
    pub fn new(settings: &Settings) -> Self {
        let secret = match &settings.auth_secret {
            Some(s) => s.as_bytes().to_vec(),
            None => {
                let mut k = vec![0u8; 32];
                getrandom::getrandom(&mut k).expect("the OS provides random bytes");
                k
            }
        };
        Self {
            digest: Digest::new(&secret, settings.nonce_secs, 100_000),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Authenticates and authorizes `req` from a source that `trusted` or not.
    pub async fn check(
        &self,
        settings: &Settings,
        client: &LocsvcClient,
        metrics: &Metrics,
        req: &Request,
        trusted: bool,
    ) -> Gate {
        if settings.auth == AuthMode::Off || trusted {
            return Gate::Pass;
        }
        let Some(ch) = challenge_for(settings, req) else {
            return Gate::Pass;
        };
        let (Some(user), domain) = (
            ch.identity.user.clone(),
            ch.identity.host.to_ascii_lowercase(),
        ) else {
            return Gate::Answer(403, "Forbidden", Vec::new());
        };
        let realm = settings.realm.clone().unwrap_or_else(|| domain.clone());
        let now = unix_now();
        let challenge = |stale: bool| {
            let headers = self
                .digest
                .challenges(&realm, &settings.auth_algorithms, now, stale)
                .into_iter()
                .map(|v| (ch.challenge, v))
                .collect();
            Gate::Answer(ch.code, ch.reason, headers)
        };
        let Some(answer) = req
            .header_rows(ch.answer)
            .iter()
            .filter_map(|v| digest::parse_authorization(v))
            .find(|c| c.realm == realm)
        else {
            return challenge(false);
        };
        let who = Who {
            domain: &domain,
            realm: &realm,
            ttl: Duration::from_secs(settings.credentials_cache_secs),
        };
        match self
            .verify_answer(client, metrics, &answer, &req.method(), &who, now)
            .await
        {
            Answered::Proven if answer.username == user => Gate::Pass,
            Answered::Proven => Gate::Answer(403, "Forbidden", Vec::new()),
            Answered::Stale => challenge(true),
            Answered::Refused => challenge(false),
            Answered::NoCredentials(e) => {
                let (code, _, headers) = e.sip();
                tracing::warn!(error = %e, "cannot fetch credentials");
                Gate::Answer(code, "Service Unavailable", headers)
            }
        }
    }

    /// Checks `answer` against the HA1s of its user, fetched again once
    /// when a cached HA1 may predate a password change.
    async fn verify_answer(
        &self,
        client: &LocsvcClient,
        metrics: &Metrics,
        answer: &Credentials,
        method: &str,
        who: &Who<'_>,
        now: u64,
    ) -> Answered {
        let mut refreshed = false;
        loop {
            let (ha1, _, forced) = match self
                .credentials(client, metrics, &answer.username, who, refreshed)
                .await
            {
                Ok(c) => c,
                Err(e) => return Answered::NoCredentials(e),
            };
            let Some(ha1) = ha1 else {
                return Answered::Refused;
            };
            match self.digest.verify(answer, method, who.realm, &ha1, now) {
                Verdict::Ok => return Answered::Proven,
                Verdict::Stale => return Answered::Stale,
                // A cached HA1 may predate a password change: ask once more.
                Verdict::Rejected("response")
                    if !refreshed && forced.is_none_or(|t| t.elapsed() >= REFETCH_EVERY) =>
                {
                    refreshed = true;
                }
                Verdict::Rejected(why) => {
                    tracing::debug!(user = answer.username, why, "digest answer refused");
                    return Answered::Refused;
                }
            }
        }
    }

    /// HA1s of `username@domain` in `realm`, from the cache unless older
    /// than `ttl` or `fresh` is asked for.
    async fn credentials(
        &self,
        client: &LocsvcClient,
        metrics: &Metrics,
        username: &str,
        who: &Who<'_>,
        fresh: bool,
    ) -> Result<Cached, LocsvcError> {
        let (domain, realm, ttl) = (who.domain, who.realm, who.ttl);
        let key = (username.to_string(), domain.to_string(), realm.to_string());
        if !fresh
            && let Some(hit) = self
                .cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .filter(|(_, at, _)| at.elapsed() < ttl)
                .cloned()
        {
            return Ok(hit);
        }
        let started = Instant::now();
        let result = client.credentials(username, domain, realm).await;
        metrics.locsvc_call(
            "credentials",
            result.is_ok(),
            started.elapsed().as_secs_f64(),
        );
        let ha1 = result?;
        let now = Instant::now();
        let entry = (ha1, now, fresh.then_some(now));
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, entry.clone());
        Ok(entry)
    }
}

/// The challenge `req` is subject to, if any.
fn challenge_for(settings: &Settings, req: &Request) -> Option<Challenge> {
    let method = req.method();
    if method == "REGISTER" {
        let (to, _) = req.to().ok()?;
        return Some(Challenge {
            code: 401,
            reason: "Unauthorized",
            answer: "Authorization",
            challenge: "WWW-Authenticate",
            identity: to,
        });
    }
    // An OPTIONS keep-alive to the shim itself is answered before anyone
    // is asked for a password (Kamailio's REQINIT does the same).
    let to_server = method == "OPTIONS" && req.uri().is_some_and(|u| u.user.is_none());
    if method == "ACK" || method == "CANCEL" || to_server {
        return None;
    }
    let (_, to_tag) = req.to().ok()?;
    let from = req.from_uri().ok()?;
    if to_tag.is_some() || !settings.serves(&from.host) {
        return None;
    }
    Some(Challenge {
        code: 407,
        reason: "Proxy Authentication Required",
        answer: "Proxy-Authorization",
        challenge: "Proxy-Authenticate",
        identity: from,
    })
}
