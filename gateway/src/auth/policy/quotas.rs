//! `[[quotas]]`: a principal's rates, in the policy file beside its rights, so one file says what
//! a device or service may do and how much of it.
//!
//! ```toml
//! [[quotas]]
//! who = ["sensor-fleet"]            # or roles = [...]; "anonymous" and "*" as in rules
//! protocol = "mqtt"                 # this protocol only; without it, every protocol together
//! messages_in_per_second = 100      # 0 (or absent): no limit for this principal
//! bytes_in_per_second = 65536
//! messages_out_per_second = 0
//! bytes_out_per_second = 0
//! ```
//!
//! For each principal the first entry naming it (by name, role, `anonymous` or `*`) decides, once
//! for every protocol together and once per protocol; where none does, `[limits.quotas]` in the
//! config does. Entries are read in order each time a connection (or call) starts: there are few.

use serde::Deserialize;

use super::{
    error::PolicyError,
    rules::{Who, parse_who},
};
use crate::auth::principal::Principal;
use crate::limits::{QuotaRates, QuotaRules};

/// The protocols an entry's `protocol` may name.
const PROTOCOLS: [&str; 3] = ["grpc", "mqtt", "amqp"];

/// One `[[quotas]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaEntry {
    who: Option<Vec<String>>,
    roles: Option<Vec<String>>,
    protocol: Option<String>,
    #[serde(default)]
    messages_in_per_second: u64,
    #[serde(default)]
    bytes_in_per_second: u64,
    #[serde(default)]
    messages_out_per_second: u64,
    #[serde(default)]
    bytes_out_per_second: u64,
}

/// A checked `[[quotas]]` entry.
#[derive(Debug)]
pub(super) struct QuotaRule {
    who: Vec<Who>,
    roles: Vec<String>,
    /// `None`: every protocol together.
    protocol: Option<String>,
    rates: QuotaRates,
}

/// Parses the `[[quotas]]` tables, in order; an error names the entry.
pub(super) fn parse(tables: Vec<toml::Table>) -> Result<Vec<QuotaRule>, PolicyError> {
    tables
        .into_iter()
        .enumerate()
        .map(|(index, table)| {
            let problem = |problem: String| PolicyError::Quota {
                quota: index + 1,
                problem,
            };
            let entry: QuotaEntry = toml::Value::Table(table)
                .try_into()
                .map_err(|error: toml::de::Error| problem(error.message().to_owned()))?;
            entry.check().map_err(problem)
        })
        .collect()
}

impl QuotaEntry {
    fn check(self) -> Result<QuotaRule, String> {
        let who = self.who.unwrap_or_default();
        let roles = self.roles.unwrap_or_default();
        if who.is_empty() && roles.is_empty() {
            return Err("a quota needs `who` or `roles` (use who = [\"*\"] for anyone)".into());
        }
        if let Some(protocol) = &self.protocol
            && !PROTOCOLS.contains(&protocol.as_str())
        {
            return Err(format!(
                "`protocol` {protocol:?} is not one of {}",
                PROTOCOLS.join(", ")
            ));
        }
        Ok(QuotaRule {
            who: who
                .iter()
                .map(|name| parse_who(name))
                .collect::<Result<_, _>>()?,
            roles,
            protocol: self.protocol,
            rates: QuotaRates {
                messages_in_per_second: self.messages_in_per_second,
                bytes_in_per_second: self.bytes_in_per_second,
                messages_out_per_second: self.messages_out_per_second,
                bytes_out_per_second: self.bytes_out_per_second,
            },
        })
    }
}

impl QuotaRule {
    fn names(&self, principal: &Principal) -> bool {
        let named = self.who.iter().any(|who| match who {
            Who::Anyone => true,
            Who::Anonymous => principal.is_anonymous(),
            Who::Name(name) => !principal.is_anonymous() && *name == principal.name,
        });
        named || self.roles.iter().any(|role| principal.has_role(role))
    }
}

/// What the entries say of `principal` through `protocol`.
pub(super) fn rules_for(rules: &[QuotaRule], principal: &Principal, protocol: &str) -> QuotaRules {
    let first = |wanted: Option<&str>| {
        rules
            .iter()
            .find(|rule| rule.protocol.as_deref() == wanted && rule.names(principal))
            .map(|rule| rule.rates)
    };
    QuotaRules {
        overall: first(None),
        protocol: first(Some(protocol)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Source;

    fn rules(text: &str) -> Result<Vec<QuotaRule>, PolicyError> {
        #[derive(Deserialize)]
        struct File {
            quotas: Vec<toml::Table>,
        }
        let file: File = toml::from_str(text).map_err(PolicyError::Toml)?;
        parse(file.quotas)
    }

    #[test]
    fn the_first_entry_naming_a_principal_decides_overall_and_per_protocol() {
        let rules = rules(
            "[[quotas]]\nwho = [\"greedy\"]\nprotocol = \"mqtt\"\nmessages_in_per_second = 10\n\
             [[quotas]]\nroles = [\"fleet\"]\nmessages_in_per_second = 100\n\
             [[quotas]]\nwho = [\"*\"]\nmessages_in_per_second = 1000\n",
        )
        .unwrap();
        let greedy = Principal::new("greedy", vec!["fleet".into()], Source::Password);
        let mqtt = rules_for(&rules, &greedy, "mqtt");
        assert_eq!(mqtt.protocol.map(|r| r.messages_in_per_second), Some(10));
        assert_eq!(mqtt.overall.map(|r| r.messages_in_per_second), Some(100));
        let grpc = rules_for(&rules, &greedy, "grpc");
        assert_eq!(grpc.protocol, None);
        let anonymous = rules_for(&rules, &Principal::anonymous(), "amqp");
        assert_eq!(
            anonymous.overall.map(|r| r.messages_in_per_second),
            Some(1000)
        );
    }

    #[test]
    fn a_malformed_entry_is_named() {
        let error = rules("[[quotas]]\nwho = [\"a\"]\nprotocol = \"kafka\"\n").unwrap_err();
        assert!(error.to_string().contains("quota 1"), "{error}");
        let error = rules("[[quotas]]\nmessages_in_per_second = 1\n").unwrap_err();
        assert!(error.to_string().contains("`who` or `roles`"), "{error}");
        let error = rules("[[quotas]]\nwho = [\"a\"]\nmessages_per_second = 1\n").unwrap_err();
        assert!(error.to_string().contains("messages_per_second"), "{error}");
    }
}
