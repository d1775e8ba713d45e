//! Authorization: may this principal do this action on this resource? One place decides, for
//! every front end: the policy file's rules (default deny once a policy is set), the admin role,
//! and the protection of the gateway's own state. The log layer
//! ([`Authorized`](crate::log::layers::Authorized)) asks it for every request in Kafka's terms;
//! the MQTT front end asks it in MQTT's (topic names and filters).

use std::sync::Arc;

use super::{
    Principal,
    policy::{Action, Policy, Resource, Subject},
    protected::Protected,
    reloading::Reloading,
};
use crate::{Error, limits::QuotaRules, metrics::names};

/// Decides requests. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Authorizer {
    policy: Option<Reloading<Policy>>,
    protected: Arc<Protected>,
    admin_role: Arc<str>,
    /// Whether clients without credentials may administer: only while nothing is configured, when
    /// they are loopback clients (the secure default). Otherwise the admin role is needed.
    anonymous_admin: bool,
}

impl Authorizer {
    pub(super) fn new(
        policy: Option<Reloading<Policy>>,
        protected: Protected,
        admin_role: &str,
        anonymous_admin: bool,
    ) -> Self {
        Self {
            policy,
            protected: Arc::new(protected),
            admin_role: admin_role.into(),
            anonymous_admin,
        }
    }

    /// No policy, nothing configured: anything but the protected state, and loopback clients
    /// administer (tests and tools).
    pub fn open(protected: Protected) -> Self {
        Self::new(None, protected, "admin", true)
    }

    /// With a fixed policy, and authentication on (tests).
    pub fn with_policy(policy: Policy, protected: Protected, admin_role: &str) -> Self {
        Self::new(Some(Reloading::fixed(policy)), protected, admin_role, false)
    }

    /// What the policy's `[[quotas]]` say of `principal` through `protocol` (nothing without a
    /// policy: the config's defaults apply).
    pub fn quota_rules(&self, principal: &Principal, protocol: &str) -> QuotaRules {
        self.policy
            .as_ref()
            .map(|policy| policy.current().quota_rules(principal, protocol))
            .unwrap_or_default()
    }

    /// Whether `principal` holds the admin role: it may do anything, the gateway's own state
    /// included, whatever the policy says (so an operator cannot lock themselves out).
    pub fn is_admin(&self, principal: &Principal) -> bool {
        principal.has_role(&self.admin_role)
    }

    /// Whether `principal` may use the Admin service, reflection and the status page: the admin
    /// role; or, while nothing is configured (no users, no tokens, `allow_anonymous` unset), a
    /// client without credentials, which is then a loopback client. A certificate or an
    /// `allow_anonymous = true` never makes anyone an administrator.
    pub fn may_administer(&self, principal: &Principal) -> bool {
        self.is_admin(principal) || (self.anonymous_admin && principal.is_anonymous())
    }

    /// Whether a policy is set (then whatever no rule allows is denied).
    pub fn has_policy(&self) -> bool {
        self.policy.is_some()
    }

    /// The protected state.
    pub fn protected(&self) -> &Protected {
        &self.protected
    }

    /// Whether `principal` may reach `topic`: not one of the gateway's own, or as an admin. A
    /// refusal is counted and logged like the policy's.
    pub fn protect_topic(
        &self,
        protocol: &'static str,
        principal: &Principal,
        action: Action,
        topic: &str,
    ) -> Result<(), Error> {
        if self.is_admin(principal) || !self.protected.topic(topic) {
            return Ok(());
        }
        Err(self.denied(
            protocol,
            principal,
            action,
            &Resource::Topic(topic),
            "it holds the gateway's internal state".into(),
        ))
    }

    /// Whether `principal`, connected through `protocol`, may use `group`: not another protocol's
    /// (MQTT's session and share groups), or as an admin.
    pub fn protect_group(
        &self,
        protocol: &'static str,
        principal: &Principal,
        action: Action,
        group: &str,
    ) -> Result<(), Error> {
        match Protected::group_owner(group) {
            Some(owner) if owner != protocol && !self.is_admin(principal) => Err(self.denied(
                protocol,
                principal,
                action,
                &Resource::Group(group),
                format!("it belongs to {owner}'s sessions"),
            )),
            _ => Ok(()),
        }
    }

    /// Whether `subject` may do `action` on a Kafka `topic` (the protection, then the policy),
    /// without counting or logging anything: for filtering what a listing or a pattern shows.
    pub fn allows_topic(&self, subject: Subject<'_>, action: Action, topic: &str) -> bool {
        if self.is_admin(subject.principal) {
            return true;
        }
        !self.protected.topic(topic)
            && self.policy.as_ref().is_none_or(|policy| {
                policy
                    .current()
                    .decide(subject, action, Resource::Topic(topic))
                    .allowed
            })
    }

    /// [`Authorizer::allows_topic`] for a group.
    pub fn allows_group(
        &self,
        protocol: &'static str,
        subject: Subject<'_>,
        action: Action,
        group: &str,
    ) -> bool {
        if self.is_admin(subject.principal) {
            return true;
        }
        Protected::group_owner(group).is_none_or(|owner| owner == protocol)
            && self.policy.as_ref().is_none_or(|policy| {
                policy
                    .current()
                    .decide(subject, action, Resource::Group(group))
                    .allowed
            })
    }

    /// The policy's answer for `subject` doing `action` on `resource`; `protocol` labels a denial's
    /// metric. Admins are always allowed; without a policy everyone is.
    pub fn check(
        &self,
        protocol: &'static str,
        subject: Subject<'_>,
        action: Action,
        resource: Resource<'_>,
    ) -> Result<(), Error> {
        if self.is_admin(subject.principal) {
            return Ok(());
        }
        let Some(policy) = &self.policy else {
            return Ok(());
        };
        let decision = policy.current().decide(subject, action, resource);
        if decision.allowed {
            return Ok(());
        }
        let reason = match decision.rule {
            Some(rule) => format!("denied by rule {rule} of the policy"),
            None => "no rule of the policy allows it".to_owned(),
        };
        Err(self.denied(protocol, subject.principal, action, &resource, reason))
    }

    /// A refusal of `action` on `resource` for `reason`, counted and logged as an audit event.
    pub fn denied(
        &self,
        protocol: &'static str,
        principal: &Principal,
        action: Action,
        resource: &Resource<'_>,
        reason: String,
    ) -> Error {
        metrics::counter!(names::AUTH_DENIED, "protocol" => protocol, "action" => action.as_str())
            .increment(1);
        tracing::info!(
            target: "courier::audit",
            event = "authorization",
            outcome = "denied",
            protocol,
            principal = %principal.name,
            action = action.as_str(),
            resource = %resource,
            %reason,
        );
        Error::Forbidden {
            principal: principal.name.clone(),
            action: action.as_str(),
            resource: resource.to_string(),
            reason,
        }
    }
}
