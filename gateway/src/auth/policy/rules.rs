//! The policy file's model: the TOML as written, checked rule by rule into [`Rule`]s, and what it
//! takes for one rule to apply to a request.
//!
//! Each rule is deserialized on its own, so every mistake, even an unknown key, is reported with the
//! rule's number rather than only a line and column.

use serde::Deserialize;

use super::{
    actions::{Action, ActionSet},
    error::PolicyError,
    patterns::{Glob, MqttPattern, Substitutions},
    request::Resource,
};

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    rules: Vec<toml::Table>,
    #[serde(default)]
    quotas: Vec<toml::Table>,
}

/// One `[[rules]]` table as written. See the parent module for what each key means.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleEntry {
    who: Option<Vec<String>>,
    roles: Option<Vec<String>>,
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
    topics: Option<Vec<String>>,
    mqtt: Option<Vec<String>>,
    groups: Option<Vec<String>>,
}

/// Whether a rule grants or refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Effect {
    Allow,
    Deny,
}

/// A name in a rule's `who`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Who {
    /// `*`: every principal, anonymous ones included.
    Anyone,
    /// `anonymous`: clients that presented no credentials.
    Anonymous,
    /// An authenticated principal's name.
    Name(String),
}

/// A checked rule: what it decides, on which actions and which resources.
#[derive(Debug)]
pub(super) struct Rule {
    pub(super) effect: Effect,
    actions: ActionSet,
    /// Empty when the rule lists none; an empty list in the file is refused.
    topics: Vec<Glob>,
    groups: Vec<Glob>,
    mqtt: Vec<MqttPattern>,
}

/// A rule and whom it names, which the index keeps apart from the rule.
#[derive(Debug)]
pub(super) struct ParsedRule {
    pub(super) rule: Rule,
    pub(super) who: Vec<Who>,
    pub(super) roles: Vec<String>,
}

/// Parses a policy's text into its rules and its `[[quotas]]` tables (left to `quotas`), in order.
pub(super) fn parse(text: &str) -> Result<(Vec<ParsedRule>, Vec<toml::Table>), PolicyError> {
    let file: PolicyFile = toml::from_str(text).map_err(PolicyError::Toml)?;
    let rules = file
        .rules
        .into_iter()
        .enumerate()
        .map(|(index, table)| {
            let number = index + 1;
            let problem = |problem: String| PolicyError::Rule {
                rule: number,
                problem,
            };
            let entry: RuleEntry = toml::Value::Table(table)
                .try_into()
                .map_err(|error: toml::de::Error| problem(error.message().to_owned()))?;
            entry.check().map_err(problem)
        })
        .collect::<Result<_, _>>()?;
    Ok((rules, file.quotas))
}

impl RuleEntry {
    fn check(self) -> Result<ParsedRule, String> {
        let who = non_empty("who", self.who)?;
        let roles = non_empty("roles", self.roles)?;
        if who.is_empty() && roles.is_empty() {
            return Err("a rule needs `who` or `roles` (use who = [\"*\"] for anyone)".into());
        }
        let who = who
            .iter()
            .map(|name| parse_who(name))
            .collect::<Result<_, _>>()?;
        if let Some(role) = roles.iter().find(|role| role.is_empty()) {
            return Err(format!("`roles` has an empty name {role:?}"));
        }

        let (effect, actions) = match (self.allow, self.deny) {
            (Some(actions), None) => (Effect::Allow, actions),
            (None, Some(actions)) => (Effect::Deny, actions),
            (Some(_), Some(_)) => return Err("a rule has `allow` or `deny`, not both".into()),
            (None, None) => return Err("a rule needs `allow` or `deny`".into()),
        };
        let key = match effect {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        };
        let actions = ActionSet::parse(&non_empty(key, Some(actions))?)?;

        let globs = |key: &str, patterns: Option<Vec<String>>| -> Result<Vec<Glob>, String> {
            non_empty(key, patterns)?
                .iter()
                .map(|pattern| {
                    Glob::parse(pattern)
                        .map_err(|why| format!("`{key}` pattern {pattern:?}: {why}"))
                })
                .collect()
        };
        let topics = globs("topics", self.topics)?;
        let groups = globs("groups", self.groups)?;
        let mqtt = non_empty("mqtt", self.mqtt)?
            .iter()
            .map(|filter| {
                MqttPattern::parse(filter).map_err(|why| format!("`mqtt` filter {filter:?}: {why}"))
            })
            .collect::<Result<_, _>>()?;

        Ok(ParsedRule {
            rule: Rule {
                effect,
                actions,
                topics,
                groups,
                mqtt,
            },
            who,
            roles,
        })
    }
}

/// The list, refusing one that is present but empty (a rule that can never match is a mistake).
fn non_empty(key: &str, list: Option<Vec<String>>) -> Result<Vec<String>, String> {
    match list {
        Some(list) if list.is_empty() => Err(format!("`{key}` is empty")),
        list => Ok(list.unwrap_or_default()),
    }
}

pub(super) fn parse_who(name: &str) -> Result<Who, String> {
    match name {
        "*" => Ok(Who::Anyone),
        crate::auth::principal::ANONYMOUS => Ok(Who::Anonymous),
        "" => Err("`who` has an empty name".into()),
        // Names are exact; a `*` inside one would read as a glob that is not one.
        _ if name.contains('*') => Err(format!(
            "`who` name {name:?} contains `*`; names are exact, and \"*\" alone means anyone"
        )),
        _ => Ok(Who::Name(name.to_owned())),
    }
}

impl Rule {
    /// Whether the rule applies to `action` on `resource` (its `who`/`roles` already matched).
    pub(super) fn applies(
        &self,
        action: Action,
        resource: Resource<'_>,
        values: &Substitutions<'_>,
    ) -> bool {
        if !self.actions.contains(action) {
            return false;
        }
        match resource {
            Resource::Topic(name) => self.topics.iter().any(|glob| glob.matches(name, values)),
            Resource::Group(name) => self.groups.iter().any(|glob| glob.matches(name, values)),
            Resource::MqttTopic(topic) => self
                .mqtt
                .iter()
                .any(|filter| filter.matches_topic(topic, values)),
            // A grant must cover the whole subscription; a denial need only touch it.
            Resource::MqttFilter(asked) => match self.effect {
                Effect::Allow => self.mqtt.iter().any(|grant| grant.covers(asked, values)),
                Effect::Deny => self
                    .mqtt
                    .iter()
                    .any(|denied| denied.overlaps(asked, values)),
            },
            // Not a resource a list could name: a rule that names topics, filters or groups is
            // about those, so only a rule that names none (`allow = ["switch_region"]`) applies.
            Resource::Cluster => {
                self.topics.is_empty() && self.mqtt.is_empty() && self.groups.is_empty()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(text: &str) -> (usize, String) {
        match parse(text) {
            Err(PolicyError::Rule { rule, problem }) => (rule, problem),
            other => panic!("expected a rule error, got {other:?}"),
        }
    }

    const GOOD: &str = "[[rules]]\nwho = [\"*\"]\nallow = [\"describe\"]\n";

    #[test]
    fn a_full_rule_parses() {
        let parsed = parse(
            r##"
            [[rules]]
            who = ["alice", "anonymous", "*"]
            roles = ["ops"]
            allow = ["produce", "consume"]
            topics = ["orders", "orders.*", "telemetry.%u"]
            mqtt = ["devices/%c/#", "users/%u/+/status"]
            groups = ["orders-*", "%u-*"]
            "##,
        )
        .unwrap()
        .0;
        assert_eq!(parsed.len(), 1);
        let rule = &parsed[0];
        assert_eq!(
            rule.who,
            [Who::Name("alice".into()), Who::Anonymous, Who::Anyone]
        );
        assert_eq!(rule.roles, ["ops"]);
        assert_eq!(rule.rule.effect, Effect::Allow);
        assert_eq!(
            (
                rule.rule.topics.len(),
                rule.rule.mqtt.len(),
                rule.rule.groups.len()
            ),
            (3, 2, 2)
        );
    }

    #[test]
    fn an_empty_file_has_no_rules() {
        let (rules, quotas) = parse("").unwrap();
        assert!(rules.is_empty() && quotas.is_empty());
    }

    #[test]
    fn mistakes_name_the_rule_and_the_problem() {
        let cases: [(&str, &str); 14] = [
            (
                "who = [\"*\"]\nallow = [\"produce\"]\ntopic = [\"x\"]",
                "unknown field `topic`",
            ),
            (
                "who = [\"*\"]\nallow = [\"publish\"]",
                "unknown action \"publish\"",
            ),
            ("who = []\nallow = [\"produce\"]", "`who` is empty"),
            ("roles = []\nallow = [\"produce\"]", "`roles` is empty"),
            ("who = [\"*\"]\nallow = []", "`allow` is empty"),
            (
                "who = [\"*\"]\ndeny = [\"consume\"]\ntopics = []",
                "`topics` is empty",
            ),
            (
                "who = [\"*\"]\nallow = [\"produce\"]\ndeny = [\"consume\"]",
                "not both",
            ),
            ("who = [\"*\"]\ntopics = [\"x\"]", "needs `allow` or `deny`"),
            ("allow = [\"produce\"]", "needs `who` or `roles`"),
            (
                "who = [\"*\"]\nallow = [\"consume\"]\nmqtt = [\"a/#/b\"]",
                "\"a/#/b\"",
            ),
            (
                "who = [\"*\"]\nallow = [\"consume\"]\nmqtt = [\"a+\"]",
                "whole level",
            ),
            (
                "who = [\"*\"]\nallow = [\"consume\"]\ngroups = [\"\"]",
                "empty pattern",
            ),
            (
                "who = [\"dev-*\"]\nallow = [\"consume\"]",
                "names are exact",
            ),
            ("who = \"alice\"\nallow = [\"consume\"]", "invalid type"),
        ];
        for (rule, expected) in cases {
            let text = format!("{GOOD}{GOOD}[[rules]]\n{rule}\n{GOOD}");
            let (number, problem) = problem(&text);
            assert_eq!(number, 3, "{rule}");
            assert!(problem.contains(expected), "{rule}: {problem}");
            let message = PolicyError::Rule {
                rule: number,
                problem,
            }
            .to_string();
            assert!(message.starts_with("policy rule 3: "), "{message}");
        }
    }

    #[test]
    fn mistakes_outside_rules_are_toml_errors() {
        assert!(matches!(
            parse("[[rule]]\nwho = [\"*\"]"),
            Err(PolicyError::Toml(_))
        ));
        assert!(matches!(parse("rules = 3"), Err(PolicyError::Toml(_))));
        assert!(matches!(parse("[[rules]\n"), Err(PolicyError::Toml(_))));
    }
}
