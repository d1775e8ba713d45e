//! The patterns a rule lists: globs for Kafka topics and consumer groups, MQTT filters, both with
//! `%u` (the principal's name) and `%c` (the client id).
//!
//! Placeholders are filled in when a request is decided, not when the policy is loaded: one rule
//! serves every user, and a policy never grows with the number of principals. A value that is
//! missing, or that would change what the pattern means, makes the pattern match nothing, as
//! Mosquitto does for its pattern ACLs: a client choosing the id `#` must not be granted `devices/#`.

use std::borrow::Cow;

use super::mqtt_filters;
use crate::auth::principal::Principal;

/// The values `%u` and `%c` stand for in one request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Substitutions<'a> {
    /// `None` for an anonymous principal: anonymous clients share a name, so it grants nothing.
    user: Option<&'a str>,
    client: Option<&'a str>,
}

impl<'a> Substitutions<'a> {
    pub(super) fn for_subject(principal: &'a Principal, client_id: Option<&'a str>) -> Self {
        let user = (!principal.is_anonymous()).then_some(principal.name.as_str());
        Self {
            // An empty value would make `devices/%c/#` the shared `devices//#`.
            user: user.filter(|name| !name.is_empty()),
            client: client_id.filter(|id| !id.is_empty()),
        }
    }
}

/// A pattern's text, with the positions of its placeholders remembered.
#[derive(Debug, Clone)]
struct Template {
    text: String,
    has_placeholders: bool,
}

impl Template {
    fn new(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            has_placeholders: text.contains("%u") || text.contains("%c"),
        }
    }

    /// The text with `%u` and `%c` filled in, or `None` when a value is missing or contains one of
    /// `reserved`. Any other `%` is literal. Allocates only when there is something to fill in.
    fn resolve(&self, values: &Substitutions<'_>, reserved: &[char]) -> Option<Cow<'_, str>> {
        if !self.has_placeholders {
            return Some(Cow::Borrowed(&self.text));
        }
        let mut resolved = String::with_capacity(self.text.len() + 32);
        let mut rest = self.text.as_str();
        while let Some(at) = rest.find('%') {
            resolved.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let value = match after.as_bytes().first() {
                Some(b'u') => values.user,
                Some(b'c') => values.client,
                _ => {
                    resolved.push('%');
                    rest = after;
                    continue;
                }
            };
            let value = value.filter(|value| !value.contains(reserved))?;
            resolved.push_str(value);
            rest = &after[1..];
        }
        resolved.push_str(rest);
        Some(Cow::Owned(resolved))
    }
}

/// A Kafka topic or consumer group pattern: `*` matches any run of characters (`.` included);
/// everything else matches itself.
#[derive(Debug, Clone)]
pub(super) struct Glob(Template);

impl Glob {
    /// A glob from a rule; only the empty pattern is refused.
    pub(super) fn parse(text: &str) -> Result<Self, &'static str> {
        if text.is_empty() {
            return Err("an empty pattern matches nothing");
        }
        Ok(Self(Template::new(text)))
    }

    /// Whether `name` matches, placeholders filled from `values`. A value holding `*` would turn a
    /// name into a wildcard, so it matches nothing.
    pub(super) fn matches(&self, name: &str, values: &Substitutions<'_>) -> bool {
        self.0
            .resolve(values, &['*'])
            .is_some_and(|pattern| glob_matches(&pattern, name))
    }
}

/// Whether `name` matches `pattern`, where `*` is any run of characters. Takes time proportional to
/// the name times the pattern, never exponential: the text between stars is found leftmost first,
/// which is always the best choice when `*` is the only wildcard.
fn glob_matches(pattern: &str, name: &str) -> bool {
    let mut pieces = pattern.split('*');
    let Some(rest) = pieces.next().and_then(|head| name.strip_prefix(head)) else {
        return false;
    };
    let Some(tail) = pieces.next_back() else {
        // No star: the pattern is the name.
        return rest.is_empty();
    };
    let mut rest = rest;
    for middle in pieces {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    rest.ends_with(tail)
}

/// An MQTT topic filter from a rule, `%u`/`%c` allowed as whole levels or parts of one.
#[derive(Debug, Clone)]
pub(super) struct MqttPattern(Template);

impl MqttPattern {
    /// A filter from a rule, refused when not a valid MQTT filter.
    pub(super) fn parse(text: &str) -> Result<Self, &'static str> {
        // Placeholders hold none of `/`, `+`, `#`, and values holding them are refused, so checking
        // the text checks every filter it can become.
        mqtt_filters::check_filter(text)?;
        Ok(Self(Template::new(text)))
    }

    /// Whether an allow or deny rule with this filter applies to a publish to `topic`.
    pub(super) fn matches_topic(&self, topic: &str, values: &Substitutions<'_>) -> bool {
        self.resolve(values)
            .is_some_and(|filter| mqtt_filters::matches(&filter, topic))
    }

    /// Whether this grant covers a subscription to `filter`.
    pub(super) fn covers(&self, filter: &str, values: &Substitutions<'_>) -> bool {
        self.resolve(values)
            .is_some_and(|grant| mqtt_filters::covers(&grant, filter))
    }

    /// Whether this denial touches a subscription to `filter`.
    pub(super) fn overlaps(&self, filter: &str, values: &Substitutions<'_>) -> bool {
        self.resolve(values)
            .is_some_and(|denied| mqtt_filters::overlaps(&denied, filter))
    }

    fn resolve(&self, values: &Substitutions<'_>) -> Option<Cow<'_, str>> {
        let resolved = self.0.resolve(values, &['/', '+', '#', '\0'])?;
        // A value must not make the filter a `$` one (`%c/#` with client id `$SYS`): `$` topics are
        // the broker's, reached only by filters written to name them.
        if resolved.starts_with('$') && !self.0.text.starts_with('$') {
            return None;
        }
        Some(resolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Source;

    fn values<'a>(principal: &'a Principal, client: Option<&'a str>) -> Substitutions<'a> {
        Substitutions::for_subject(principal, client)
    }

    #[test]
    fn globs() {
        assert!(glob_matches("orders", "orders"));
        assert!(!glob_matches("orders", "orders2"));
        assert!(!glob_matches("orders", "order"));
        assert!(glob_matches("orders.*", "orders.eu"));
        assert!(glob_matches("orders.*", "orders.eu.west"));
        assert!(glob_matches("orders.*", "orders."));
        assert!(!glob_matches("orders.*", "orders"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("*.audit", "a.b.audit"));
        assert!(glob_matches("a*b*c", "abc"));
        assert!(glob_matches("a*b*c", "axxbyybzc"));
        assert!(!glob_matches("a*b*c", "acb"));
        assert!(!glob_matches("ab*ba", "aba"));
        assert!(glob_matches("a**b", "ab"));
        assert!(!glob_matches("*a*a*a*a*b", &"a".repeat(10_000)));
    }

    #[test]
    fn placeholders_are_filled_per_request() {
        let alice = Principal::new("alice", vec![], Source::Password);
        let glob = Glob::parse("telemetry.%u.*").unwrap();
        assert!(glob.matches("telemetry.alice.x", &values(&alice, None)));
        assert!(!glob.matches("telemetry.bob.x", &values(&alice, None)));

        let filter = MqttPattern::parse("devices/%c/#").unwrap();
        assert!(filter.matches_topic("devices/c1/t", &values(&alice, Some("c1"))));
        assert!(!filter.matches_topic("devices/c2/t", &values(&alice, Some("c1"))));
        // No client id, an empty one: the pattern matches nothing.
        assert!(!filter.matches_topic("devices//t", &values(&alice, None)));
        assert!(!filter.matches_topic("devices//t", &values(&alice, Some(""))));

        let partial = MqttPattern::parse("users/u-%u/%c-status").unwrap();
        assert!(partial.matches_topic("users/u-alice/c1-status", &values(&alice, Some("c1"))));
        // An unknown `%` sequence is literal.
        let literal = Glob::parse("100%x-%u").unwrap();
        assert!(literal.matches("100%x-alice", &values(&alice, None)));
    }

    #[test]
    fn values_that_would_change_a_pattern_match_nothing() {
        let starry = Principal::new("ev*l", vec![], Source::Token);
        assert!(
            !Glob::parse("%u")
                .unwrap()
                .matches("ev*l", &values(&starry, None))
        );
        assert!(
            !Glob::parse("%u")
                .unwrap()
                .matches("evil", &values(&starry, None))
        );

        let anyone = Principal::new("alice", vec![], Source::Password);
        let filter = MqttPattern::parse("devices/%c/#").unwrap();
        for client in ["#", "+", "a/b", "x+", "$SYS"] {
            assert!(!filter.matches_topic("devices/a/b", &values(&anyone, Some(client))));
            assert!(!filter.covers("devices/+/x", &values(&anyone, Some(client))));
            assert!(!filter.overlaps("devices/a/b", &values(&anyone, Some(client))));
        }
        let leading = MqttPattern::parse("%c/#").unwrap();
        assert!(!leading.covers("$SYS/#", &values(&anyone, Some("$SYS"))));
        // `$` elsewhere than the start changes nothing.
        assert!(filter.matches_topic("devices/$x/b", &values(&anyone, Some("$x"))));
    }

    #[test]
    fn anonymous_principals_fill_no_user_placeholder() {
        let anonymous = Principal::anonymous();
        assert!(
            !Glob::parse("%u")
                .unwrap()
                .matches("anonymous", &values(&anonymous, None))
        );
        let filter = MqttPattern::parse("devices/%c/#").unwrap();
        assert!(filter.matches_topic("devices/c1/x", &values(&anonymous, Some("c1"))));
    }

    #[test]
    fn an_empty_glob_is_refused() {
        assert!(Glob::parse("").is_err());
    }
}
