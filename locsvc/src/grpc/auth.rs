//! Bearer-token check for the gRPC API, compared in constant time so the
//! token cannot be guessed byte by byte from response timing.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// A tonic interceptor requiring `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct BearerAuth {
    expected: Option<Arc<[u8]>>,
}

impl BearerAuth {
    /// Requires `token`; `None` lets every request through.
    pub fn new(token: Option<&str>) -> Self {
        Self {
            expected: token.map(|t| Arc::from(format!("Bearer {t}").into_bytes())),
        }
    }

    /// Checks one request.
    pub fn check<T>(&self, req: Request<T>) -> Result<Request<T>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(req);
        };
        let got = req
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if bool::from(got.ct_eq(expected)) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("missing or wrong bearer token"))
        }
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
}
