//! Decisions of whole policies: rule order, default deny, who and roles, every resource kind.

use super::*;
use crate::auth::{Principal, Source};
use Action::*;

fn policy(text: &str) -> Policy {
    match Policy::parse(text) {
        Ok(policy) => policy,
        Err(error) => panic!("{error}"),
    }
}

fn user(name: &str) -> Principal {
    Principal::new(name, vec![], Source::Password)
}

fn decide(
    policy: &Policy,
    principal: &Principal,
    action: Action,
    resource: Resource<'_>,
) -> Decision {
    policy.decide(
        Subject {
            principal,
            client_id: Some("c1"),
        },
        action,
        resource,
    )
}

fn allowed_by(rule: usize) -> Decision {
    Decision {
        allowed: true,
        rule: Some(rule),
    }
}

fn denied_by(rule: usize) -> Decision {
    Decision {
        allowed: false,
        rule: Some(rule),
    }
}

const DEFAULT_DENY: Decision = Decision {
    allowed: false,
    rule: None,
};

#[test]
fn the_first_applicable_rule_decides() {
    let policy = policy(
        r##"
        [[rules]]
        who = ["alice"]
        deny = ["produce"]
        topics = ["orders.secret"]

        [[rules]]
        who = ["*"]
        allow = ["produce", "consume"]
        topics = ["orders*"]

        [[rules]]
        who = ["alice"]
        deny = ["consume"]
        topics = ["orders"]
        "##,
    );
    let alice = user("alice");
    let orders = Resource::Topic("orders");
    assert_eq!(
        decide(&policy, &alice, Produce, Resource::Topic("orders.secret")),
        denied_by(1)
    );
    assert_eq!(decide(&policy, &alice, Produce, orders), allowed_by(2));
    // Rule 3 comes too late: rule 2 already allowed.
    assert_eq!(decide(&policy, &alice, Consume, orders), allowed_by(2));
    assert_eq!(
        decide(
            &policy,
            &user("bob"),
            Produce,
            Resource::Topic("orders.secret")
        ),
        allowed_by(2)
    );
    assert_eq!(policy.len(), 3);
}

#[test]
fn no_applicable_rule_means_no() {
    let policy =
        policy("[[rules]]\nwho = [\"alice\"]\nallow = [\"produce\"]\ntopics = [\"orders\"]");
    let alice = user("alice");
    assert_eq!(
        decide(&policy, &alice, Consume, Resource::Topic("orders")),
        DEFAULT_DENY
    );
    assert_eq!(
        decide(&policy, &alice, Produce, Resource::Topic("other")),
        DEFAULT_DENY
    );
    assert_eq!(
        decide(&policy, &user("bob"), Produce, Resource::Topic("orders")),
        DEFAULT_DENY
    );

    let empty = self::policy("");
    assert!(empty.is_empty());
    assert_eq!(
        decide(&empty, &alice, Describe, Resource::Cluster),
        DEFAULT_DENY
    );
}

#[test]
fn each_action_and_shorthand_grants_exactly_its_actions() {
    let cases: [(&str, &[Action]); 10] = [
        ("produce", &[Produce]),
        ("consume", &[Consume]),
        ("join_group", &[JoinGroup]),
        ("describe", &[Describe]),
        ("create_topic", &[CreateTopic]),
        ("delete_topic", &[DeleteTopic]),
        ("commit", &[Commit]),
        ("switch_region", &[SwitchRegion]),
        ("admin", &[CreateTopic, DeleteTopic, Commit, SwitchRegion]),
        ("all", &Action::ALL),
    ];
    let alice = user("alice");
    for (name, granted) in cases {
        let policy = policy(&format!(
            "[[rules]]\nwho = [\"alice\"]\nallow = [\"{name}\"]\ntopics = [\"t\"]\ngroups = [\"g\"]"
        ));
        for action in Action::ALL {
            let expected = granted.contains(&action);
            for resource in [Resource::Topic("t"), Resource::Group("g")] {
                let decision = decide(&policy, &alice, action, resource);
                assert_eq!(
                    decision.allowed, expected,
                    "{name} and {action:?} on {resource}"
                );
            }
        }
    }
}

#[test]
fn who_and_roles() {
    let policy = policy(
        r##"
        [[rules]]
        roles = ["ops"]
        allow = ["all"]
        topics = ["*"]

        [[rules]]
        who = ["alice"]
        roles = ["auditors"]
        allow = ["describe"]
        topics = ["*"]

        [[rules]]
        who = ["anonymous"]
        allow = ["consume"]
        topics = ["public.*"]

        [[rules]]
        who = ["*"]
        allow = ["consume"]
        topics = ["news"]
        "##,
    );
    let topic = Resource::Topic("orders");
    let ops = Principal::new("carol", vec!["dev".into(), "ops".into()], Source::Token);
    assert_eq!(decide(&policy, &ops, DeleteTopic, topic), allowed_by(1));
    assert_eq!(
        decide(&policy, &user("alice"), Describe, topic),
        allowed_by(2)
    );
    let auditor = Principal::new("dave", vec!["auditors".into()], Source::Certificate);
    assert_eq!(decide(&policy, &auditor, Describe, topic), allowed_by(2));
    assert_eq!(decide(&policy, &user("bob"), Describe, topic), DEFAULT_DENY);

    let anonymous = Principal::anonymous();
    assert_eq!(
        decide(&policy, &anonymous, Consume, Resource::Topic("public.x")),
        allowed_by(3)
    );
    assert_eq!(
        decide(&policy, &user("bob"), Consume, Resource::Topic("public.x")),
        DEFAULT_DENY
    );
    // `*` includes anonymous clients.
    assert_eq!(
        decide(&policy, &anonymous, Consume, Resource::Topic("news")),
        allowed_by(4)
    );
    assert_eq!(
        decide(&policy, &user("bob"), Consume, Resource::Topic("news")),
        allowed_by(4)
    );
}

#[test]
fn user_and_client_placeholders() {
    let policy = policy(
        r##"
        [[rules]]
        who = ["*"]
        allow = ["produce", "consume"]
        topics = ["telemetry.%u"]
        mqtt = ["devices/%c/#", "users/%u/+/status"]
        groups = ["%u-*"]
        "##,
    );
    let alice = user("alice");
    let subject = |principal, client_id| Subject {
        principal,
        client_id,
    };
    let own = subject(&alice, Some("c1"));
    assert!(
        policy
            .decide(own, Produce, Resource::Topic("telemetry.alice"))
            .allowed
    );
    assert!(
        !policy
            .decide(own, Produce, Resource::Topic("telemetry.bob"))
            .allowed
    );
    assert!(
        policy
            .decide(own, Produce, Resource::MqttTopic("devices/c1/temp"))
            .allowed
    );
    assert!(
        !policy
            .decide(own, Produce, Resource::MqttTopic("devices/c2/temp"))
            .allowed
    );
    assert!(
        policy
            .decide(own, Produce, Resource::MqttTopic("users/alice/x/status"))
            .allowed
    );
    assert!(
        !policy
            .decide(own, Produce, Resource::MqttTopic("users/bob/x/status"))
            .allowed
    );
    assert!(
        !policy
            .decide(own, JoinGroup, Resource::Group("alice-1"))
            .allowed,
        "not granted"
    );
    let no_client = subject(&alice, None);
    assert!(
        !policy
            .decide(no_client, Produce, Resource::MqttTopic("devices//temp"))
            .allowed
    );

    // Names and ids holding wildcards grant nothing, rather than everything.
    for client in ["#", "+", "a/b"] {
        let sneaky = subject(&alice, Some(client));
        assert!(
            !policy
                .decide(sneaky, Consume, Resource::MqttFilter("devices/#"))
                .allowed
        );
        assert!(
            !policy
                .decide(sneaky, Consume, Resource::MqttFilter("devices/+/x"))
                .allowed
        );
    }
    let starry = user("*");
    assert!(!decide(&policy, &starry, Produce, Resource::Topic("telemetry.x")).allowed);
    let slashy = user("bob/+");
    assert!(
        !decide(
            &policy,
            &slashy,
            Produce,
            Resource::MqttTopic("users/bob/x/x/status")
        )
        .allowed
    );

    // Anonymous clients have no name to fill in; their client id still counts.
    let anonymous = Principal::anonymous();
    assert!(
        !decide(
            &policy,
            &anonymous,
            Produce,
            Resource::Topic("telemetry.anonymous")
        )
        .allowed
    );
    assert!(
        decide(
            &policy,
            &anonymous,
            Produce,
            Resource::MqttTopic("devices/c1/t")
        )
        .allowed
    );
}

#[test]
fn topic_and_group_patterns() {
    let policy = policy(
        r##"
        [[rules]]
        who = ["alice"]
        allow = ["consume", "join_group", "commit"]
        topics = ["orders", "orders.*"]
        groups = ["orders-*"]
        "##,
    );
    let alice = user("alice");
    for (topic, expected) in [
        ("orders", true),
        ("orders.eu", true),
        ("orders.eu.west", true),
        ("ordersx", false),
        ("x.orders", false),
    ] {
        assert_eq!(
            decide(&policy, &alice, Consume, Resource::Topic(topic)).allowed,
            expected,
            "{topic}"
        );
    }
    assert!(decide(&policy, &alice, JoinGroup, Resource::Group("orders-1")).allowed);
    assert!(decide(&policy, &alice, Commit, Resource::Group("orders-1")).allowed);
    assert!(!decide(&policy, &alice, JoinGroup, Resource::Group("billing")).allowed);
    // A topic grant is not a group grant, and the other way round.
    assert!(!decide(&policy, &alice, JoinGroup, Resource::Group("orders")).allowed);
    assert!(!decide(&policy, &alice, Consume, Resource::Topic("orders-1")).allowed);
}

#[test]
fn a_rule_only_applies_to_resources_of_a_kind_it_lists() {
    let policy = policy(
        r##"
        [[rules]]
        who = ["alice"]
        deny = ["produce"]
        mqtt = ["#"]

        [[rules]]
        who = ["alice"]
        allow = ["produce", "switch_region"]
        topics = ["orders"]
        "##,
    );
    let alice = user("alice");
    // The MQTT-only denial does not touch Kafka topics, and grants none.
    assert_eq!(
        decide(&policy, &alice, Produce, Resource::Topic("orders")),
        allowed_by(2)
    );
    assert_eq!(
        decide(&policy, &alice, Produce, Resource::MqttTopic("orders")),
        denied_by(1)
    );
    // The cluster is decided only by rules that name no resource.
    assert_eq!(
        decide(&policy, &alice, SwitchRegion, Resource::Cluster),
        DEFAULT_DENY
    );
    let switcher = self::policy("[[rules]]\nwho = [\"alice\"]\nallow = [\"switch_region\"]");
    assert_eq!(
        decide(&switcher, &alice, SwitchRegion, Resource::Cluster),
        allowed_by(1)
    );
    assert_eq!(
        decide(&policy, &alice, Produce, Resource::Group("orders")),
        DEFAULT_DENY
    );
}

#[test]
fn mqtt_publish_and_subscribe() {
    let policy = policy(
        r##"
        [[rules]]
        who = ["*"]
        deny = ["produce", "consume"]
        mqtt = ["secret/#"]

        [[rules]]
        who = ["*"]
        allow = ["produce", "consume"]
        mqtt = ["#"]

        [[rules]]
        who = ["*"]
        allow = ["consume"]
        mqtt = ["$SYS/broker/+"]
        "##,
    );
    let alice = user("alice");
    let publish = |topic| decide(&policy, &alice, Produce, Resource::MqttTopic(topic));
    let subscribe = |filter| decide(&policy, &alice, Consume, Resource::MqttFilter(filter));
    assert_eq!(publish("secret"), denied_by(1));
    assert_eq!(publish("secret/x"), denied_by(1));
    assert_eq!(publish("public/x"), allowed_by(2));
    // `#` does not reach `$` topics, and nothing else grants publishing there.
    assert_eq!(publish("$SYS/broker/load"), DEFAULT_DENY);

    assert_eq!(subscribe("#"), denied_by(1));
    assert_eq!(subscribe("+/x"), denied_by(1));
    assert_eq!(subscribe("a/#"), allowed_by(2));
    assert_eq!(subscribe("secret"), denied_by(1));
    assert_eq!(subscribe("$SYS/broker/load"), allowed_by(3));
    assert_eq!(subscribe("$SYS/broker/+"), allowed_by(3));
    assert_eq!(subscribe("$SYS/#"), DEFAULT_DENY);

    // Malformed names and filters are refused before any rule.
    assert_eq!(publish("a/+"), DEFAULT_DENY);
    assert_eq!(publish(""), DEFAULT_DENY);
    assert_eq!(subscribe("a/#/b"), DEFAULT_DENY);
    assert_eq!(subscribe("a+"), DEFAULT_DENY);
}

#[test]
fn a_subscription_must_be_covered_by_one_grant() {
    let policy = policy(
        r##"
        [[rules]]
        who = ["*"]
        allow = ["consume"]
        mqtt = ["devices/%c/#"]
        "##,
    );
    let alice = user("alice");
    let subscribe = |filter| decide(&policy, &alice, Consume, Resource::MqttFilter(filter));
    assert!(subscribe("devices/c1/+/x").allowed);
    assert!(subscribe("devices/c1").allowed);
    assert!(!subscribe("#").allowed);
    assert!(!subscribe("devices/+/x").allowed);
    assert!(!subscribe("devices/#").allowed);
}

/// 10,000 rules, one per user: decisions stay right wherever a user's rule sits, and the index
/// means each decision reads only that user's rule and the shared ones.
#[test]
fn ten_thousand_rules() {
    let mut text =
        String::from("[[rules]]\nwho = [\"*\"]\ndeny = [\"produce\"]\nmqtt = [\"banned/#\"]\n");
    for n in 0..10_000 {
        text.push_str(&format!(
            "[[rules]]\nwho = [\"user{n}\"]\nallow = [\"produce\", \"consume\"]\nmqtt = [\"devices/%u/#\"]\ntopics = [\"t{n}\"]\n"
        ));
    }
    let policy = self::policy(&text);
    assert_eq!(policy.len(), 10_001);
    for n in [0, 1, 4_999, 5_000, 9_998, 9_999] {
        let principal = user(&format!("user{n}"));
        let own = format!("devices/user{n}/temp");
        let other = format!("devices/user{}/temp", (n + 1) % 10_000);
        let topic = format!("t{n}");
        assert_eq!(
            decide(&policy, &principal, Produce, Resource::MqttTopic(&own)),
            allowed_by(n + 2)
        );
        assert_eq!(
            decide(&policy, &principal, Produce, Resource::MqttTopic(&other)),
            DEFAULT_DENY
        );
        assert_eq!(
            decide(
                &policy,
                &principal,
                Produce,
                Resource::MqttTopic("banned/x")
            ),
            denied_by(1)
        );
        assert_eq!(
            decide(&policy, &principal, Consume, Resource::Topic(&topic)),
            allowed_by(n + 2)
        );
        assert_eq!(
            decide(
                &policy,
                &principal,
                Consume,
                Resource::MqttFilter("devices/#")
            ),
            DEFAULT_DENY
        );
    }
    assert_eq!(
        decide(
            &policy,
            &user("user10000"),
            Produce,
            Resource::MqttTopic("devices/user10000/t")
        ),
        DEFAULT_DENY
    );
    // How many rules one decision reads: the shared one and the user's own.
    let mut read = 0;
    policy.index.first_applicable(&user("user9999"), |_| {
        read += 1;
        false
    });
    assert_eq!(read, 2);
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");

    let missing = Policy::load(&path).unwrap_err();
    assert!(matches!(missing, PolicyError::Read { .. }));
    assert!(missing.to_string().contains("policy.toml"), "{missing}");

    std::fs::write(&path, "[[rules]]\nwho = [\"*\"]\nallow = [\"fly\"]\n").unwrap();
    let bad = Policy::load(&path).unwrap_err();
    assert_eq!(bad.rule(), Some(1));
    assert_eq!(bad.path(), Some(path.as_path()));
    let message = bad.to_string();
    assert!(
        message.contains("policy.toml") && message.contains("rule 1"),
        "{message}"
    );

    std::fs::write(&path, "[[rules]]\nwho = [\"*\"]\nallow = [\"describe\"]\n").unwrap();
    assert_eq!(Policy::load(&path).unwrap().len(), 1);

    // Callers that read the file themselves add its name after parsing.
    let parsed = Policy::parse("[[rules]]\nwho = [\"*\"]\n").unwrap_err();
    let named = parsed.in_file("/etc/courier/policy.toml");
    assert_eq!(named.rule(), Some(1));
    assert_eq!(named.path(), Some(Path::new("/etc/courier/policy.toml")));
    assert!(
        named
            .to_string()
            .starts_with("policy file /etc/courier/policy.toml: policy rule 1: ")
    );
}

#[test]
fn resources_display_for_logs() {
    assert_eq!(Resource::Topic("orders").to_string(), "topic \"orders\"");
    assert_eq!(Resource::MqttFilter("#").to_string(), "MQTT filter \"#\"");
    assert_eq!(Resource::Group("g").to_string(), "group \"g\"");
    assert_eq!(Resource::Cluster.to_string(), "the cluster");
}
