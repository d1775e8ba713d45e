//! The Admin service and reflection are for administrators: once authentication is configured,
//! only principals with the admin role (`[auth] admin_role`) may use them; before that, anyone
//! the gateway serves may (loopback clients only, by default). Reflection lists every service and
//! message, which is a map of the API that only operators need.

use courier_gateway::auth::{Authorizer, Principal};
use tonic::{Request, Status, service::Interceptor};

use crate::authentication::principal_of;

/// Refuses `principal` the use of `what` unless it may administer.
pub(crate) fn require_admin(
    authorizer: &Authorizer,
    principal: &Principal,
    what: &str,
) -> Result<(), Status> {
    if authorizer.may_administer(principal) {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "{} may not use {what}: it needs the admin role",
        principal.name
    )))
}

/// Lets only administrators through to a service (reflection, whose code is not ours).
#[derive(Debug, Clone)]
pub(crate) struct AdminOnly {
    authorizer: Authorizer,
    what: &'static str,
}

impl AdminOnly {
    /// Guards `what` (named in the refusal) with `authorizer`.
    pub(crate) fn new(authorizer: Authorizer, what: &'static str) -> Self {
        Self { authorizer, what }
    }
}

impl Interceptor for AdminOnly {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let principal = principal_of(&request)?;
        if let Err(status) = require_admin(&self.authorizer, principal, self.what) {
            tracing::info!(
                target: "courier::audit",
                event = "admin",
                principal = %principal.name,
                peer = %crate::streams::peer_of(&request),
                action = self.what,
                resource = "-",
                outcome = "refused",
            );
            return Err(status);
        }
        Ok(request)
    }
}
