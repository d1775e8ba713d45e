//! Authorization: which principal may do what to which topic, group or MQTT filter, decided by an
//! ordered list of rules from a TOML policy file. Every front end asks the same [`Policy`], so a rule
//! means the same thing to a gRPC, MQTT or AMQP client.
//!
//! ```toml
//! [[rules]]
//! who = ["alice", "anonymous", "*"]  # names; "anonymous" = clients without credentials; "*" = anyone
//! roles = ["ops"]                    # or anyone holding one of these roles
//! allow = ["produce", "consume"]     # or `deny = [...]`: exactly one of the two
//! topics = ["orders", "orders.*", "telemetry.%u"]  # Kafka topics (glob: `*` is any run of characters)
//! mqtt = ["devices/%c/#", "users/%u/+/status"]     # MQTT topic filters
//! groups = ["orders-*", "%u-*"]                    # consumer groups (glob)
//! ```
//!
//! `[[quotas]]` tables beside the rules give principals their rates (see `quotas`).
//!
//! The first rule that applies decides; when none does, the answer is no. A rule applies when its
//! `who` or `roles` match the subject, its list holds the action, and the resource matches its list of
//! the resource's kind (a rule with no such list never applies to it; [`Resource::Cluster`] is decided by the
//! rules that name no resource at all). `%u` stands for the principal's name and `%c` for the client id; a pattern needing a value
//! the subject lacks (an anonymous principal, no client id), or whose value would change the
//! pattern's meaning (a `*` in a glob; `/`, `+`, `#` in an MQTT filter), matches nothing.
//!
//! Modules: `actions` (the action names), `request` (what is asked: subject, resource, and the
//! decision), `error` (a policy that does not load), `rules` (the file's model and its checks), `patterns`
//! (globs and MQTT filters with `%u`/`%c`), `mqtt_filters` (matching, covering and overlapping MQTT
//! filters), `index` (rules by who they name, so a decision reads only the subject's rules),
//! `quotas` (the `[[quotas]]` entries).

use std::path::Path;

use crate::auth::principal::Principal;
use crate::limits::QuotaRules;

mod actions;
mod error;
mod index;
mod mqtt_filters;
mod patterns;
mod quotas;
mod request;
mod rules;
#[cfg(test)]
mod tests;

pub use actions::Action;
pub use error::PolicyError;
pub use request::{Decision, Resource, Subject};

use index::WhoIndex;
use patterns::Substitutions;
use rules::{Effect, Rule};

/// A parsed policy: its rules in file order, indexed by whom they name.
#[derive(Debug)]
pub struct Policy {
    rules: Vec<Rule>,
    index: WhoIndex,
    quotas: Vec<quotas::QuotaRule>,
}

impl Policy {
    /// Parses a policy from TOML text. An error names the rule (1-based) and what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let (parsed, quota_tables) = rules::parse(text)?;
        let quotas = quotas::parse(quota_tables)?;
        let mut index = WhoIndex::default();
        let mut rules = Vec::with_capacity(parsed.len());
        for (number, rule) in parsed.into_iter().enumerate() {
            index.insert(number, &rule.who, &rule.roles);
            rules.push(rule.rule);
        }
        Ok(Self {
            rules,
            index,
            quotas,
        })
    }

    /// Reads and parses the policy file at `path`. An error names the file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_file(&path.display().to_string(), &text)
    }

    /// Parses `text`, the policy file at `path`: an error names the file. (The reloading watcher
    /// reads the file itself and hands its text here.)
    pub fn parse_file(path: &str, text: &str) -> Result<Self, PolicyError> {
        Self::parse(text).map_err(|error| error.in_file(path))
    }

    /// Whether `subject` may do `action` to `resource`: the first rule that applies decides, and no
    /// rule applying means no. Reads only the rules naming the subject (by name, role, `anonymous`
    /// or `*`), so its cost does not grow with rules for other principals.
    pub fn decide(&self, subject: Subject<'_>, action: Action, resource: Resource<'_>) -> Decision {
        if !resource.is_well_formed() {
            return Decision::DEFAULT_DENY;
        }
        let values = Substitutions::for_subject(subject.principal, subject.client_id);
        let first = self.index.first_applicable(subject.principal, |number| {
            self.rules
                .get(number)
                .is_some_and(|rule| rule.applies(action, resource, &values))
        });
        let Some(number) = first else {
            return Decision::DEFAULT_DENY;
        };
        Decision {
            allowed: self
                .rules
                .get(number)
                .is_some_and(|rule| rule.effect == Effect::Allow),
            rule: Some(number + 1),
        }
    }

    /// What the policy's `[[quotas]]` say of `principal` through `protocol` (`grpc`, `mqtt`,
    /// `amqp`): the first entry naming it for every protocol together, and for this protocol.
    pub fn quota_rules(&self, principal: &Principal, protocol: &str) -> QuotaRules {
        quotas::rules_for(&self.quotas, principal, protocol)
    }

    /// How many rules the policy has.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the policy has no rules (and so refuses everything).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}
