//! Rules indexed by whom they name, so deciding reads only the rules that could apply to the subject.
//!
//! A large policy is mostly one or a few rules per device or user. Scanning it all on every publish
//! would cost in proportion to the number of principals; instead each rule's number is listed under
//! every name and role it mentions (and under `*` or `anonymous`), and a decision reads only the
//! subject's lists. Each list is in rule order, so the first rule that applies in a list is that
//! list's answer, and the lowest of those answers is the policy's.

use std::collections::HashMap;

use super::rules::Who;
use crate::auth::principal::Principal;

/// Rule numbers (0-based, ascending) by the names and roles the rules mention.
#[derive(Debug, Default)]
pub(super) struct WhoIndex {
    by_name: HashMap<String, Vec<usize>>,
    by_role: HashMap<String, Vec<usize>>,
    anyone: Vec<usize>,
    anonymous: Vec<usize>,
}

impl WhoIndex {
    /// Lists rule `number` under each of `who` and `roles`. Rules are inserted in ascending order.
    pub(super) fn insert(&mut self, number: usize, who: &[Who], roles: &[String]) {
        for who in who {
            let list = match who {
                Who::Anyone => &mut self.anyone,
                Who::Anonymous => &mut self.anonymous,
                Who::Name(name) => self.by_name.entry(name.clone()).or_default(),
            };
            push_once(list, number);
        }
        for role in roles {
            push_once(self.by_role.entry(role.clone()).or_default(), number);
        }
    }

    /// The lowest-numbered rule naming `principal` for which `applies` holds.
    ///
    /// `anonymous` rules are for principals without credentials only, and a rule naming a user is
    /// never read for an anonymous principal, whatever name it was given.
    pub(super) fn first_applicable(
        &self,
        principal: &Principal,
        mut applies: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        let mut first = first_in(&self.anyone, None, &mut applies);
        let own = if principal.is_anonymous() {
            Some(&self.anonymous)
        } else {
            self.by_name.get(principal.name.as_str())
        };
        if let Some(list) = own {
            first = first_in(list, first, &mut applies);
        }
        for role in &principal.roles {
            if let Some(list) = self.by_role.get(role.as_str()) {
                first = first_in(list, first, &mut applies);
            }
        }
        first
    }
}

/// The lower of `best` and the first rule of `list` that applies, reading no rule at or past `best`.
fn first_in(
    list: &[usize],
    best: Option<usize>,
    applies: &mut impl FnMut(usize) -> bool,
) -> Option<usize> {
    list.iter()
        .copied()
        .take_while(|&number| best.is_none_or(|best| number < best))
        .find(|&number| applies(number))
        .or(best)
}

/// Adds `number` unless it is already last, so a rule naming someone twice is read once.
fn push_once(list: &mut Vec<usize>, number: usize) {
    if list.last() != Some(&number) {
        list.push(number);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Source;

    fn index(rules: &[(&[Who], &[&str])]) -> WhoIndex {
        let mut index = WhoIndex::default();
        for (number, (who, roles)) in rules.iter().enumerate() {
            let roles: Vec<String> = roles.iter().map(|role| (*role).to_owned()).collect();
            index.insert(number, who, &roles);
        }
        index
    }

    /// Every rule number the index reads for `principal`, in the order it reads them.
    fn read(index: &WhoIndex, principal: &Principal) -> Vec<usize> {
        let mut seen = Vec::new();
        index.first_applicable(principal, |number| {
            seen.push(number);
            false
        });
        seen
    }

    #[test]
    fn only_the_subjects_lists_are_read() {
        let alice = || Who::Name("alice".into());
        let bob = || Who::Name("bob".into());
        let index = index(&[
            (&[alice()], &[]),
            (&[bob()], &[]),
            (&[Who::Anyone], &[]),
            (&[Who::Anonymous], &[]),
            (&[], &["ops"]),
            (&[alice(), alice()], &["ops"]),
        ]);
        let alice_ops = Principal::new("alice", vec!["ops".into()], Source::Password);
        assert_eq!(read(&index, &alice_ops), [2, 0, 5, 4, 5]);
        let bob = Principal::new("bob", vec![], Source::Password);
        assert_eq!(read(&index, &bob), [2, 1]);
        assert_eq!(read(&index, &Principal::anonymous()), [2, 3]);
        // A user who happens to be called "anonymous" is not an anonymous client.
        let named = Principal::new("anonymous", vec![], Source::Token);
        assert_eq!(read(&index, &named), [2]);
    }

    #[test]
    fn the_lowest_applicable_rule_wins_and_later_ones_are_not_read() {
        let index = index(&[
            (&[Who::Name("alice".into())], &[]),
            (&[Who::Anyone], &[]),
            (&[], &["ops"]),
            (&[Who::Anyone], &[]),
        ]);
        let alice = Principal::new("alice", vec!["ops".into()], Source::Password);
        let mut seen = Vec::new();
        let first = index.first_applicable(&alice, |number| {
            seen.push(number);
            number != 0
        });
        assert_eq!(first, Some(1));
        // `anyone` answers 1; alice's own list reads 0 (not applicable); the ops list stops before 2.
        assert_eq!(seen, [1, 0]);
    }
}
