//! The `locsvc.v1.Subscribers` service: digest credentials for SIP fronts
//! (`GetCredentials`, data-plane token) and their administration (admin
//! token). Checks input, then delegates to the `subscriber` store and the
//! pure rules in `credentials`.

use locsvc_proto::v1 as pb;
use locsvc_proto::v1::subscribers_server::Subscribers;
use svc_base::telemetry::{self, Parent};
use tonic::{Request, Response, Status};

use super::auth::{Level, Tokens};
use super::status;
use crate::credentials::{check_name, check_password, check_realm, secrets_for};
use crate::store::subscriber::SubscriberStore;

/// List page when the request says 0.
pub const DEFAULT_PAGE: u32 = 100;
/// Largest List page.
pub const MAX_PAGE: u32 = 1000;

/// The gRPC face of the credential store.
#[derive(Debug, Clone)]
pub struct SubscribersApi {
    store: SubscriberStore,
    tokens: Tokens,
}

impl SubscribersApi {
    /// Serves `store`; `tokens` decide who may call what.
    pub fn new(store: SubscriberStore, tokens: Tokens) -> Self {
        Self { store, tokens }
    }

    /// GetCredentials itself (its trace span is around it).
    async fn credentials(
        &self,
        req: Request<pb::GetCredentialsRequest>,
    ) -> Result<Response<pb::GetCredentialsResponse>, Status> {
        self.tokens.check(&req, Level::Data)?;
        let r = req.into_inner();
        account(&r.username, &r.domain)?;
        check_realm(&r.realm)?;
        let row = self
            .store
            .get(&r.username, &r.domain)
            .await
            .map_err(status::credential_store)?;
        let Some(row) = row else {
            return Ok(Response::new(pb::GetCredentialsResponse::default()));
        };
        let s = secrets_for((&row).into(), &r.realm);
        Ok(Response::new(pb::GetCredentialsResponse {
            found: true,
            ha1_md5: s.ha1_md5,
            ha1_sha256: s.ha1_sha256,
        }))
    }
}

fn account(username: &str, domain: &str) -> Result<(), Status> {
    check_name("username", username)?;
    check_name("domain", domain)?;
    Ok(())
}

#[tonic::async_trait]
impl Subscribers for SubscribersApi {
    async fn get_credentials(
        &self,
        req: Request<pb::GetCredentialsRequest>,
    ) -> Result<Response<pb::GetCredentialsResponse>, Status> {
        let r = req.get_ref();
        // Debug-formatted: not validated yet, and escaping keeps a crafted
        // name from forging log lines.
        let span = svc_base::rpc_span!(
            tracing::Level::INFO,
            "rpc",
            method = "GetCredentials",
            account = ?format_args!("{}@{}", r.username, r.domain),
        );
        telemetry::name_rpc_span(&span, "locsvc.v1.Subscribers", "GetCredentials", "server");
        Parent::of(req.metadata()).adopt(&span);
        telemetry::in_rpc_span(span, self.credentials(req)).await
    }

    async fn add(
        &self,
        req: Request<pb::AddSubscriberRequest>,
    ) -> Result<Response<pb::AddSubscriberResponse>, Status> {
        self.tokens.check(&req, Level::Admin)?;
        let r = req.into_inner();
        account(&r.username, &r.domain)?;
        check_password(&r.password)?;
        let added = self
            .store
            .insert(&r.username, &r.domain, &r.password)
            .await
            .map_err(status::credential_store)?;
        if !added {
            return Err(Status::already_exists(format!(
                "subscriber {}@{} exists; use SetPassword",
                r.username, r.domain
            )));
        }
        tracing::info!(username = %r.username, domain = %r.domain, "subscriber added");
        Ok(Response::new(pb::AddSubscriberResponse {}))
    }

    async fn set_password(
        &self,
        req: Request<pb::SetPasswordRequest>,
    ) -> Result<Response<pb::SetPasswordResponse>, Status> {
        self.tokens.check(&req, Level::Admin)?;
        let r = req.into_inner();
        account(&r.username, &r.domain)?;
        check_password(&r.password)?;
        let done = self
            .store
            .set_password(&r.username, &r.domain, &r.password)
            .await
            .map_err(status::credential_store)?;
        if !done {
            return Err(Status::not_found(format!(
                "no subscriber {}@{}",
                r.username, r.domain
            )));
        }
        tracing::info!(username = %r.username, domain = %r.domain, "subscriber password set");
        Ok(Response::new(pb::SetPasswordResponse {}))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveSubscriberRequest>,
    ) -> Result<Response<pb::RemoveSubscriberResponse>, Status> {
        self.tokens.check(&req, Level::Admin)?;
        let r = req.into_inner();
        account(&r.username, &r.domain)?;
        let removed = self
            .store
            .remove(&r.username, &r.domain)
            .await
            .map_err(status::credential_store)?;
        if removed {
            tracing::info!(username = %r.username, domain = %r.domain, "subscriber removed");
        }
        Ok(Response::new(pb::RemoveSubscriberResponse { removed }))
    }

    async fn list(
        &self,
        req: Request<pb::ListSubscribersRequest>,
    ) -> Result<Response<pb::ListSubscribersResponse>, Status> {
        self.tokens.check(&req, Level::Admin)?;
        let r = req.into_inner();
        let domain = if r.domain.is_empty() {
            None
        } else {
            check_name("domain", &r.domain)?;
            Some(r.domain.as_str())
        };
        let after: i64 = if r.page_token.is_empty() {
            0
        } else {
            r.page_token
                .parse()
                .map_err(|_| status::invalid("page_token", "not a token from a previous page"))?
        };
        let size = match r.page_size {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let rows = self
            .store
            .list(domain, after, size)
            .await
            .map_err(status::credential_store)?;
        let next_page_token = match rows.last() {
            Some(last) if rows.len() == size as usize => last.id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListSubscribersResponse {
            subscribers: rows
                .into_iter()
                .map(|s| pb::SubscriberInfo {
                    has_password: !s.password.is_empty(),
                    username: s.username,
                    domain: s.domain,
                })
                .collect(),
            next_page_token,
        }))
    }
}
