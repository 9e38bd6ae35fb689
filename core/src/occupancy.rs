//! Which channels a shard owns have subscribers, as lifecycle webhooks
//! announce them: `channel_occupied` when one fills, `channel_vacated` once
//! it has stayed empty for a grace (a reconnect or a page reload within it
//! says nothing). Pure: the shard passes its clock in.

use std::collections::{HashMap, HashSet};

/// Owned channels with subscribers, and those waiting to be vacated.
#[derive(Debug, Default)]
pub struct Occupancy {
    occupied: HashSet<Box<str>>,
    /// Emptied channels and when their grace ends (shard ms).
    vacating: HashMap<Box<str>, u64>,
}

/// What a change of a channel's subscribers means for its webhooks.
#[derive(Debug, PartialEq, Eq)]
pub enum Transition {
    /// `channel_occupied` now.
    Occupied,
    /// Nothing to say (still occupied, a vacate cancelled, still empty).
    Nothing,
}

impl Occupancy {
    /// `name` has subscribers (`on`) or none, at `now_ms`; emptied channels
    /// are vacated `grace_ms` later unless they fill again first.
    pub fn set(&mut self, name: &str, on: bool, now_ms: u64, grace_ms: u64) -> Transition {
        if on {
            if self.vacating.remove(name).is_some() {
                return Transition::Nothing;
            }
            return match self.occupied.insert(name.into()) {
                true => Transition::Occupied,
                false => Transition::Nothing,
            };
        }
        if self.occupied.contains(name) && !self.vacating.contains_key(name) {
            self.vacating.insert(name.into(), now_ms + grace_ms);
        }
        Transition::Nothing
    }

    /// The channels with subscribers (those in their grace included).
    pub fn occupied(&self) -> impl Iterator<Item = &str> {
        self.occupied.iter().map(|name| &**name)
    }

    /// The channels whose grace has run out at `now_ms`: vacated now.
    pub fn due(&mut self, now_ms: u64) -> Vec<Box<str>> {
        if self.vacating.is_empty() {
            return Vec::new();
        }
        let due: Vec<Box<str>> = self
            .vacating
            .iter()
            .filter(|(_, at)| **at <= now_ms)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &due {
            self.vacating.remove(name);
            self.occupied.remove(name);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vacated_waits_its_grace_and_a_refill_cancels_it() {
        let mut occupancy = Occupancy::default();
        assert_eq!(occupancy.set("c", true, 0, 100), Transition::Occupied);
        assert_eq!(
            occupancy.set("c", true, 1, 100),
            Transition::Nothing,
            "already"
        );
        assert_eq!(occupancy.set("c", false, 10, 100), Transition::Nothing);
        assert!(occupancy.due(50).is_empty(), "within the grace");
        // Filled again within the grace: no vacated, no second occupied.
        assert_eq!(occupancy.set("c", true, 60, 100), Transition::Nothing);
        assert!(occupancy.due(500).is_empty());
        occupancy.set("c", false, 600, 100);
        occupancy.set("c", false, 650, 100);
        assert!(occupancy.due(699).is_empty(), "the first emptying counts");
        assert_eq!(occupancy.due(700), vec![Box::<str>::from("c")]);
        assert!(occupancy.due(800).is_empty(), "once");
        assert_eq!(
            occupancy.set("c", true, 900, 100),
            Transition::Occupied,
            "a new life"
        );
        assert_eq!(occupancy.set("never", false, 0, 100), Transition::Nothing);
        assert!(occupancy.due(10_000).is_empty());
    }

    #[test]
    fn due_vacates_only_the_channels_whose_grace_ended() {
        let mut occupancy = Occupancy::default();
        for name in ["a", "b", "c"] {
            occupancy.set(name, true, 0, 100);
        }
        occupancy.set("a", false, 10, 100);
        occupancy.set("b", false, 50, 100);
        assert_eq!(occupancy.due(120), vec![Box::<str>::from("a")]);
        assert_eq!(occupancy.due(150), vec![Box::<str>::from("b")]);
        let mut left: Vec<&str> = occupancy.occupied().collect();
        left.sort_unstable();
        assert_eq!(left, ["c"]);
    }

    #[test]
    fn a_channel_in_its_grace_is_still_occupied() {
        let mut occupancy = Occupancy::default();
        occupancy.set("a", true, 0, 100);
        occupancy.set("a", false, 0, 100);
        assert_eq!(occupancy.occupied().collect::<Vec<_>>(), ["a"]);
        occupancy.due(100);
        assert_eq!(occupancy.occupied().count(), 0);
    }

    #[test]
    fn a_grace_of_zero_vacates_at_the_same_ms() {
        let mut occupancy = Occupancy::default();
        occupancy.set("a", true, 5, 0);
        occupancy.set("a", false, 7, 0);
        assert_eq!(occupancy.due(7), vec![Box::<str>::from("a")]);
    }
}
