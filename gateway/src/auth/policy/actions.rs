//! The actions a rule allows or denies, their names in the policy file, and the shorthands `admin`
//! and `all`.

/// Something a client asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Write records to a topic (an MQTT PUBLISH, an AMQP transfer, a gRPC produce).
    Produce,
    /// Read records from a topic (an MQTT SUBSCRIBE, an AMQP receiver, a gRPC consume).
    Consume,
    /// Join a consumer group.
    JoinGroup,
    /// Read a topic's or the cluster's metadata.
    Describe,
    /// Create a topic.
    CreateTopic,
    /// Delete a topic.
    DeleteTopic,
    /// Commit or seek a group's offsets explicitly.
    Commit,
    /// Move a client to another region.
    SwitchRegion,
}

impl Action {
    /// Every action: what `all` stands for.
    pub const ALL: [Self; 8] = [
        Self::Produce,
        Self::Consume,
        Self::JoinGroup,
        Self::Describe,
        Self::CreateTopic,
        Self::DeleteTopic,
        Self::Commit,
        Self::SwitchRegion,
    ];

    /// What `admin` stands for.
    const ADMIN: [Self; 4] = [
        Self::CreateTopic,
        Self::DeleteTopic,
        Self::Commit,
        Self::SwitchRegion,
    ];

    /// The name in the policy file, logs and audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Produce => "produce",
            Self::Consume => "consume",
            Self::JoinGroup => "join_group",
            Self::Describe => "describe",
            Self::CreateTopic => "create_topic",
            Self::DeleteTopic => "delete_topic",
            Self::Commit => "commit",
            Self::SwitchRegion => "switch_region",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The actions a rule's `allow` or `deny` list names, shorthands expanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct ActionSet(u8);

impl ActionSet {
    /// Parses a list of action names and shorthands.
    pub(super) fn parse(names: &[String]) -> Result<Self, String> {
        let mut set = Self::default();
        for name in names {
            let actions: &[Action] = match name.as_str() {
                "admin" => &Action::ADMIN,
                "all" => &Action::ALL,
                single => match Action::ALL.iter().find(|action| action.as_str() == single) {
                    Some(action) => std::slice::from_ref(action),
                    None => return Err(unknown_action(name)),
                },
            };
            for action in actions {
                set.0 |= action.bit();
            }
        }
        Ok(set)
    }

    /// Whether the set holds `action`.
    pub(super) fn contains(self, action: Action) -> bool {
        self.0 & action.bit() != 0
    }
}

fn unknown_action(name: &str) -> String {
    let known: Vec<&str> = Action::ALL.iter().map(|action| action.as_str()).collect();
    format!(
        "unknown action {name:?}; the actions are {}, and the shorthands admin and all",
        known.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(names: &[&str]) -> Result<ActionSet, String> {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        ActionSet::parse(&names)
    }

    fn members(set: ActionSet) -> Vec<Action> {
        Action::ALL
            .into_iter()
            .filter(|action| set.contains(*action))
            .collect()
    }

    #[test]
    fn each_action_parses_by_its_own_name() {
        for action in Action::ALL {
            assert_eq!(members(parse(&[action.as_str()]).unwrap()), [action]);
        }
    }

    #[test]
    fn shorthands_expand() {
        use Action::*;
        assert_eq!(
            members(parse(&["admin"]).unwrap()),
            [CreateTopic, DeleteTopic, Commit, SwitchRegion]
        );
        assert_eq!(members(parse(&["all"]).unwrap()), Action::ALL);
        assert_eq!(
            members(parse(&["produce", "admin", "produce"]).unwrap()),
            [Produce, CreateTopic, DeleteTopic, Commit, SwitchRegion]
        );
    }

    #[test]
    fn unknown_names_are_refused_with_the_known_ones() {
        let error = parse(&["produce", "publish"]).unwrap_err();
        assert!(error.contains("\"publish\""), "{error}");
        assert!(error.contains("switch_region"), "{error}");
        // Names are exact: no case folding, no kebab-case.
        assert!(parse(&["Produce"]).is_err());
        assert!(parse(&["join-group"]).is_err());
    }
}
