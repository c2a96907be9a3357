//! Bearer-token checks for the gRPC API, compared in constant time so a
//! token cannot be guessed byte by byte from response timing.
//!
//! Two credentials: the data-plane token (`grpc.token`: Location calls and
//! `Subscribers.GetCredentials`, what a SIP front holds) and the admin token
//! (`grpc.admin_token`: Cluster calls and subscriber administration). The
//! decision is a pure function of which tokens are configured and which one
//! the request carries (`decide`); the I/O around it is one header read.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use super::status;

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Location and GetCredentials: the data-plane token (or the admin one).
    Data,
    /// Cluster and subscriber administration: the admin token.
    Admin,
}

/// Which configured token a request presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented {
    None,
    Data,
    Admin,
}

/// The answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// No token, or an unknown one.
    Unauthenticated,
    /// A known credential that is not enough (or admin calls are disabled).
    Denied(&'static str),
}

const DATA_TOKEN_IS_NOT_ADMIN: &str =
    "this call needs the admin token (grpc.admin_token); the data-plane token is not enough";
const NO_ADMIN_TOKEN: &str = "administration calls are disabled: the server has a data-plane \
     token (grpc.token) but no grpc.admin_token";

/// Who may call what: with no token configured everything is open (local
/// development on loopback, as before admin separation); a data token
/// alone disables administration rather than letting the front's token
/// administer the cluster.
pub fn decide(level: Level, data_set: bool, admin_set: bool, p: Presented) -> Decision {
    match level {
        Level::Data if !data_set => Decision::Allow,
        Level::Data => match p {
            Presented::Data | Presented::Admin => Decision::Allow,
            Presented::None => Decision::Unauthenticated,
        },
        Level::Admin if admin_set => match p {
            Presented::Admin => Decision::Allow,
            Presented::Data => Decision::Denied(DATA_TOKEN_IS_NOT_ADMIN),
            Presented::None => Decision::Unauthenticated,
        },
        Level::Admin if data_set => Decision::Denied(NO_ADMIN_TOKEN),
        Level::Admin => Decision::Allow,
    }
}

/// The configured tokens, as the exact `authorization` values they accept.
#[derive(Clone, Default)]
pub struct Tokens {
    data: Option<Arc<[u8]>>,
    admin: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("data", &self.data.as_ref().map(|_| "***"))
            .field("admin", &self.admin.as_ref().map(|_| "***"))
            .finish()
    }
}

fn header(t: &str) -> Arc<[u8]> {
    Arc::from(format!("Bearer {t}").into_bytes())
}

impl Tokens {
    /// `data` = `grpc.token`, `admin` = `grpc.admin_token`; None = unset.
    pub fn new(data: Option<&str>, admin: Option<&str>) -> Self {
        Self {
            data: data.map(header),
            admin: admin.map(header),
        }
    }

    /// Checks one request's metadata against `level`.
    pub fn check<T>(&self, req: &Request<T>, level: Level) -> Result<(), Status> {
        let got = req
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        // Both comparisons always run, so timing tells nothing either.
        let is = |t: &Option<Arc<[u8]>>| t.as_ref().is_some_and(|t| bool::from(got.ct_eq(t)));
        let (data, admin) = (is(&self.data), is(&self.admin));
        let presented = if admin {
            Presented::Admin
        } else if data {
            Presented::Data
        } else {
            Presented::None
        };
        match decide(level, self.data.is_some(), self.admin.is_some(), presented) {
            Decision::Allow => Ok(()),
            Decision::Unauthenticated => Err(status::unauthenticated()),
            Decision::Denied(why) => Err(status::admin_required(why)),
        }
    }

    /// An interceptor requiring `level` on every call of a service.
    pub fn interceptor(&self, level: Level) -> BearerAuth {
        BearerAuth {
            tokens: self.clone(),
            level,
        }
    }
}

/// A tonic interceptor requiring one level on every call.
#[derive(Clone, Debug)]
pub struct BearerAuth {
    tokens: Tokens,
    level: Level,
}

impl BearerAuth {
    /// Requires the data-plane `token`; `None` lets every request through.
    pub fn new(token: Option<&str>) -> Self {
        Tokens::new(token, None).interceptor(Level::Data)
    }

    /// Checks one request.
    pub fn check<T>(&self, req: Request<T>) -> Result<Request<T>, Status> {
        self.tokens.check(&req, self.level).map(|()| req)
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        self.check(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(h: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut().insert("authorization", h.parse().unwrap());
        r
    }

    #[test]
    fn only_the_exact_token_passes() {
        let a = BearerAuth::new(Some("s3cret"));
        assert!(a.check(with("Bearer s3cret")).is_ok());
        assert!(a.check(with("Bearer s3cre")).is_err());
        assert!(a.check(with("Bearer s3cret ")).is_err());
        assert!(a.check(Request::new(())).is_err());
        assert!(BearerAuth::new(None).check(Request::new(())).is_ok());
    }

    #[test]
    fn the_admin_token_is_needed_for_administration_once_any_token_is_set() {
        use Decision::*;
        use Presented as P;
        // Neither token: local development, everything open.
        assert_eq!(decide(Level::Admin, false, false, P::None), Allow);
        assert_eq!(decide(Level::Data, false, false, P::None), Allow);
        // A data token alone disables administration, naming the setting.
        let Denied(why) = decide(Level::Admin, true, false, P::Data) else {
            panic!("admin with only a data token must be denied");
        };
        assert!(why.contains("grpc.admin_token"));
        assert!(matches!(
            decide(Level::Admin, true, false, P::None),
            Denied(_)
        ));
        // Both: the data token is not enough, the admin token is.
        assert!(matches!(
            decide(Level::Admin, true, true, P::Data),
            Denied(_)
        ));
        assert_eq!(decide(Level::Admin, true, true, P::None), Unauthenticated);
        assert_eq!(decide(Level::Admin, true, true, P::Admin), Allow);
        assert_eq!(decide(Level::Data, true, true, P::Data), Allow);
        assert_eq!(decide(Level::Data, true, true, P::Admin), Allow);
        assert_eq!(decide(Level::Data, true, true, P::None), Unauthenticated);
        // An admin token alone guards administration; the data plane stays
        // as configured (open).
        assert_eq!(decide(Level::Data, false, true, P::None), Allow);
        assert_eq!(decide(Level::Admin, false, true, P::None), Unauthenticated);
    }

    #[test]
    fn tokens_map_decisions_to_statuses() {
        let t = Tokens::new(Some("d"), Some("a"));
        assert!(t.check(&with("Bearer a"), Level::Admin).is_ok());
        let e = t.check(&with("Bearer d"), Level::Admin).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        let e = t.check(&with("Bearer x"), Level::Admin).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let only_data = Tokens::new(Some("d"), None);
        let e = only_data
            .check(&with("Bearer d"), Level::Admin)
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("grpc.admin_token"), "{}", e.message());
        assert!(!format!("{t:?}").contains("Bearer"));
    }
}
