//! MQTT topic filters as sets of topics: whether a filter matches a topic, whether one filter covers
//! another (every topic the second can match, the first matches too) and whether two overlap (some
//! topic matches both). A subscription is granted by a filter that covers it and refused by a deny
//! filter that overlaps it, so a wildcard subscription can never reach a topic its grant does not.
//!
//! A filter is levels split on `/`; `+` matches one level, a final `#` any number of further levels
//! including none (`a/#` matches `a`). Per MQTT 3.1.1 section 4.7.2, a filter starting with a wildcard
//! does not match topics starting with `$`.
//!
//! All three work on the filter's text, with no allocation: a filter is a prefix of levels and
//! whether it ends in `#`.

/// Why `filter` is not a valid MQTT topic filter, if it is not.
pub(super) fn check_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("a filter may not be empty");
    }
    if filter.contains('\0') {
        return Err("a filter may not contain NUL");
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "#" if levels.peek().is_some() => return Err("`#` must be the last level"),
            "#" | "+" => {}
            _ if level.contains(['+', '#']) => {
                return Err("`+` and `#` must each be a whole level");
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether `topic` is a valid MQTT topic name: not empty, no wildcards, no NUL.
pub(super) fn is_valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// Whether valid `filter` matches valid `topic`.
pub(super) fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && starts_with_wildcard(filter) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            // `#` takes the rest, or nothing: `a/#` matches `a`.
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(expected), Some(level)) if expected == level => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic valid `filter` can match, valid `grant` matches too.
///
/// Conservative in one corner: it counts the empty topic (not a valid topic name) as matched by
/// `/#`, so `/+/#` is said not to cover `/#` although no valid topic tells them apart.
pub(super) fn covers(grant: &str, filter: &str) -> bool {
    // The filter reaches `$` topics only through an exact first level; a grant starting with a
    // wildcard never matches those.
    if starts_with_dollar(filter) && starts_with_wildcard(grant) {
        return false;
    }
    let (grant, filter) = (Shape::of(grant), Shape::of(filter));
    let pairwise = || {
        grant
            .levels()
            .zip(filter.levels())
            .all(|(granted, asked)| granted == "+" || (asked != "+" && granted == asked))
    };
    match (grant.multi_level, filter.multi_level) {
        // The filter reaches deeper than any level count the grant allows.
        (false, true) => false,
        (false, false) => grant.depth == filter.depth && pairwise(),
        // The filter's topics have exactly `filter.depth` levels; the grant needs at least its own.
        (true, false) => filter.depth >= grant.depth && pairwise(),
        // The filter's shortest topics have max(depth, 1) levels (`#` alone still needs one); each
        // grant level past the filter's prefix sees any level, so must be `+`.
        (true, true) => {
            grant.depth <= filter.depth.max(1) && pairwise() && {
                grant.levels().skip(filter.depth).all(|level| level == "+")
            }
        }
    }
}

/// Whether some topic matches both valid filters.
///
/// Conservative in one corner: the empty topic counts, so `/#` and `+` are said to overlap.
pub(super) fn overlaps(a: &str, b: &str) -> bool {
    // A topic matched by a filter starting with a wildcard does not start with `$`.
    if (starts_with_wildcard(a) && starts_with_dollar(b))
        || (starts_with_wildcard(b) && starts_with_dollar(a))
    {
        return false;
    }
    let (a, b) = (Shape::of(a), Shape::of(b));
    let depths_meet = match (a.multi_level, b.multi_level) {
        (false, false) => a.depth == b.depth,
        (true, false) => b.depth >= a.depth,
        (false, true) => a.depth >= b.depth,
        (true, true) => true,
    };
    // Past the shorter prefix the levels are free (a `#` is there), and a free level can always be
    // chosen not to start with `$`.
    depths_meet
        && a.levels()
            .zip(b.levels())
            .all(|(x, y)| x == "+" || y == "+" || x == y)
}

/// A filter as its levels before a final `#`, and whether it has that `#`.
#[derive(Debug, Clone, Copy)]
struct Shape<'a> {
    /// The levels before any final `#`; `None` for `#` alone (as opposed to `Some("")`, the one
    /// empty level of `/#`).
    prefix: Option<&'a str>,
    depth: usize,
    multi_level: bool,
}

impl<'a> Shape<'a> {
    fn of(filter: &'a str) -> Self {
        let (prefix, multi_level) = match filter.strip_suffix('#') {
            Some("") => (None, true),
            Some(rest) => (rest.strip_suffix('/'), true),
            None => (Some(filter), false),
        };
        let depth = prefix.map_or(0, |prefix| prefix.matches('/').count() + 1);
        Self {
            prefix,
            depth,
            multi_level,
        }
    }

    fn levels(self) -> impl Iterator<Item = &'a str> {
        self.prefix.into_iter().flat_map(|prefix| prefix.split('/'))
    }
}

fn starts_with_wildcard(filter: &str) -> bool {
    filter.starts_with(['+', '#'])
}

fn starts_with_dollar(filter: &str) -> bool {
    filter.starts_with('$')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn filters_are_checked() {
        for good in [
            "a", "#", "+", "a/#", "a/+/b", "/", "a//b", "+/+/#", "$SYS/#", "%u/%c",
        ] {
            assert_eq!(check_filter(good), Ok(()), "{good}");
        }
        for bad in ["", "a/#/b", "#/a", "a+", "a/b#", "+a/b", "a/##", "a\0b"] {
            assert!(check_filter(bad).is_err(), "{bad}");
        }
        assert!(is_valid_topic("a/b") && is_valid_topic("/") && is_valid_topic("$SYS/x"));
        assert!(!is_valid_topic("") && !is_valid_topic("a/+") && !is_valid_topic("#"));
    }

    #[test]
    fn matching() {
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/+/c", "a//c"));
        assert!(!matches("a/+/c", "a/b/c/d"));
        assert!(!matches("a/+", "a"));
        assert!(matches("#", "a/b"));
        assert!(matches("+/#", "a"));
        assert!(matches("/#", "/x"));
        assert!(!matches("a", "a/"));
        // MQTT 4.7.2: leading wildcards skip `$` topics; exact levels reach them.
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(matches("$SYS/+", "$SYS/x"));
        assert!(matches("a/+", "a/$x"));
    }

    #[test]
    fn covering() {
        assert!(covers("devices/c1/#", "devices/c1/+/x"));
        assert!(covers("devices/c1/#", "devices/c1"));
        assert!(covers("devices/c1/#", "devices/c1/#"));
        assert!(!covers("devices/c1/#", "#"));
        assert!(!covers("devices/c1/#", "devices/+/x"));
        assert!(!covers("devices/c1/+/#", "devices/c1/#"));
        assert!(covers("#", "#"));
        assert!(covers("#", "a/+/b"));
        assert!(covers("+/#", "#"));
        assert!(!covers("+/+/#", "#"));
        assert!(covers("a/+", "a/b"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/+", "a/b/c"));
        assert!(!covers("#", "$SYS/#"));
        assert!(!covers("+/#", "$SYS/x"));
        assert!(covers("$SYS/#", "$SYS/+"));
    }

    #[test]
    fn overlapping() {
        assert!(overlaps("secret/#", "#"));
        assert!(overlaps("secret/#", "+/x"));
        assert!(!overlaps("secret/#", "a/#"));
        assert!(overlaps("secret/#", "secret"));
        assert!(!overlaps("a/+", "a"));
        assert!(overlaps("a/+/c", "+/b/#"));
        assert!(!overlaps("a/+/c", "+/b"));
        assert!(!overlaps("#", "$SYS/#"));
        assert!(!overlaps("+/x", "$SYS/x"));
        assert!(overlaps("$SYS/#", "$SYS/+"));
    }

    /// Levels the brute force is built from: two plain ones, a `$` one, and the empty level.
    const LEVELS: [&str; 4] = ["a", "b", "$x", ""];

    /// Every valid topic of 1 to 4 levels over [`LEVELS`].
    fn all_topics(levels: &[&str]) -> Vec<String> {
        let mut topics: Vec<String> = levels.iter().map(|level| (*level).to_owned()).collect();
        let mut frontier = topics.clone();
        for _ in 1..4 {
            frontier = frontier
                .iter()
                .flat_map(|topic| levels.iter().map(move |level| format!("{topic}/{level}")))
                .collect();
            topics.extend(frontier.iter().cloned());
        }
        topics.retain(|topic| is_valid_topic(topic));
        topics
    }

    /// [`LEVELS`] without the empty level.
    const PLAIN_LEVELS: [&str; 3] = ["a", "b", "$x"];

    /// A random valid filter of up to three levels over [`LEVELS`] and `+`, maybe ending in `#`.
    fn filter() -> impl Strategy<Value = String> {
        filter_over(&LEVELS)
    }

    /// A random valid filter of up to three levels over `levels` and `+`, maybe ending in `#`.
    fn filter_over(levels: &'static [&'static str]) -> impl Strategy<Value = String> {
        let level = prop::sample::select([levels, &["+"]].concat());
        (prop::collection::vec(level, 0..=3), any::<bool>()).prop_filter_map(
            "a valid filter",
            |(levels, multi_level)| {
                let mut levels = levels;
                if multi_level || levels.is_empty() {
                    levels.push("#");
                }
                let filter = levels.join("/");
                check_filter(&filter).is_ok().then_some(filter)
            },
        )
    }

    /// The definition `matches` implements, written the slow and obvious way.
    fn reference_matches(filter: &[&str], topic: &[&str], first: bool) -> bool {
        let dollar_blocked =
            |topic: &[&str]| first && topic.first().is_some_and(|l| l.starts_with('$'));
        match (filter.split_first(), topic.split_first()) {
            (Some((&"#", _)), _) => !dollar_blocked(topic),
            (Some((&"+", filter_rest)), Some((_, topic_rest))) => {
                !dollar_blocked(topic) && reference_matches(filter_rest, topic_rest, false)
            }
            (Some((level, filter_rest)), Some((topic_level, topic_rest))) => {
                level == topic_level && reference_matches(filter_rest, topic_rest, false)
            }
            (None, None) => true,
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn matches_agrees_with_its_definition(filter in filter()) {
            let levels: Vec<&str> = filter.split('/').collect();
            for topic in all_topics(&LEVELS) {
                let topic_levels: Vec<&str> = topic.split('/').collect();
                prop_assert_eq!(
                    matches(&filter, &topic),
                    reference_matches(&levels, &topic_levels, true),
                    "{} against {}", filter, topic
                );
            }
        }

        #[test]
        fn a_covering_grant_matches_every_topic_of_the_filter(grant in filter(), asked in filter()) {
            if covers(&grant, &asked) {
                for topic in all_topics(&LEVELS) {
                    prop_assert!(
                        !matches(&asked, &topic) || matches(&grant, &topic),
                        "{} covers {} yet misses {}", grant, asked, topic
                    );
                }
            }
        }

        #[test]
        fn filters_that_do_not_overlap_share_no_topic(a in filter(), b in filter()) {
            if !overlaps(&a, &b) {
                for topic in all_topics(&LEVELS) {
                    prop_assert!(
                        !(matches(&a, &topic) && matches(&b, &topic)),
                        "{} and {} both match {}", a, b, topic
                    );
                }
            }
            prop_assert_eq!(overlaps(&a, &b), overlaps(&b, &a));
        }

        /// Away from the empty level (see `covers` and `overlaps`), both are exact, not merely
        /// safe: a refused subscription has a topic that proves the refusal.
        #[test]
        fn covers_and_overlaps_are_exact_without_empty_levels(
            a in filter_over(&PLAIN_LEVELS),
            b in filter_over(&PLAIN_LEVELS),
        ) {
            let topics = all_topics(&PLAIN_LEVELS);
            let subset = topics.iter().all(|t| !matches(&b, t) || matches(&a, t));
            let common = topics.iter().any(|t| matches(&a, t) && matches(&b, t));
            prop_assert_eq!(covers(&a, &b), subset, "covers({}, {})", a, b);
            prop_assert_eq!(overlaps(&a, &b), common, "overlaps({}, {})", a, b);
        }
    }
}
