//! What one seed makes of a run: the world's shape ([`Setup`]: shards,
//! history, queue bounds, channels, clients, length) and, step by step,
//! what happens next ([`Schedule`]): a queued mesh message is delivered on
//! one of the links that hold some, a client acts, or a shard sweeps its
//! history. Knows nothing of the shard: the driver carries the steps out.

use super::rng::Rng;

/// The channel patterns that conflate (`--conflate`).
pub(super) const CONFLATE_PATTERN: &str = "px.*";
/// The channel patterns whose subscribers are listed (`--presence`).
pub(super) const PRESENCE_PATTERN: &str = "room.*";

/// Whether `channel` matches [`CONFLATE_PATTERN`].
pub(super) fn conflates(channel: &str) -> bool {
    channel.starts_with("px.")
}

/// Whether `channel` matches [`PRESENCE_PATTERN`].
pub(super) fn is_presence(channel: &str) -> bool {
    channel.starts_with("room.")
}

/// The channels a run's clients use are some of these: plain ones,
/// conflating ones and presence ones (their owners spread over the shards
/// by their hash).
const CHANNELS: [&str; 8] = [
    "news.a", "news.b", "news.c", "px.a", "px.b", "room.a", "room.b", "room.c",
];

/// The shape of one run.
#[derive(Debug, Clone)]
pub(super) struct Setup {
    pub(super) shards: usize,
    pub(super) clients: usize,
    /// Steps of the random schedule, before the run quiesces.
    pub(super) steps: usize,
    /// `--history-size`.
    pub(super) history_size: usize,
    /// `--max-queue-bytes`: small in some runs, so slow clients are closed.
    pub(super) max_queue_bytes: usize,
    /// `--conflate-after-bytes`: small, so slow clients conflate.
    pub(super) conflate_after_bytes: usize,
    /// The channels the clients use.
    pub(super) channels: Vec<&'static str>,
    /// Whether shards sweep their history now and then (only with history:
    /// then a channel is forgotten only if nothing was published on it,
    /// and its `seq` never starts again).
    pub(super) sweeps: bool,
    /// How often a step delivers a mesh message when one waits (percent).
    deliver_percent: u32,
}

/// One step of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Deliver the next message of the `n`th link that holds some.
    Deliver(usize),
    /// Client `n` acts.
    Act(usize),
    /// Shard `n` sweeps its history.
    Sweep(usize),
}

/// The seeded choice of what happens next.
pub(super) struct Schedule {
    pub(super) setup: Setup,
    /// Every choice of the run, the clients' included.
    pub(super) rng: Rng,
}

impl Schedule {
    pub(super) fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let history_size = rng.pick(&[0, 2, 5, 100]);
        let mut channels: Vec<&'static str> = CHANNELS
            .iter()
            .copied()
            .filter(|_| rng.chance(45))
            .collect();
        if channels.is_empty() {
            channels.push(rng.pick(&CHANNELS));
        }
        let setup = Setup {
            shards: rng.between(2, 4),
            clients: rng.between(2, 6),
            steps: rng.between(30, 160),
            history_size,
            max_queue_bytes: match rng.chance(25) {
                true => rng.between(600, 2000),
                false => 1 << 20,
            },
            conflate_after_bytes: rng.between(60, 400),
            channels,
            sweeps: history_size > 0 && rng.chance(30),
            deliver_percent: rng.between(25, 80) as u32,
        };
        Schedule { setup, rng }
    }

    /// What happens next, when `waiting` links hold messages.
    pub(super) fn next(&mut self, waiting: usize) -> Step {
        let setup = &self.setup;
        if waiting > 0 && self.rng.chance(setup.deliver_percent) {
            return Step::Deliver(self.rng.below(waiting));
        }
        if setup.sweeps && self.rng.chance(5) {
            return Step::Sweep(self.rng.below(setup.shards));
        }
        Step::Act(self.rng.below(setup.clients))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_makes_one_setup_and_seeds_vary_it() {
        let shape = |seed| format!("{:?}", Schedule::new(seed).setup);
        assert_eq!(shape(3), shape(3));
        let shards: std::collections::BTreeSet<usize> = (0..50)
            .map(|seed| Schedule::new(seed).setup.shards)
            .collect();
        assert_eq!(shards.into_iter().collect::<Vec<_>>(), [2, 3, 4]);
    }

    #[test]
    fn the_patterns_match_as_the_predicates_say() {
        use crate::security::pattern::{self, ChannelPattern};
        let conflate = [ChannelPattern::parse(CONFLATE_PATTERN).unwrap()];
        let presence = [ChannelPattern::parse(PRESENCE_PATTERN).unwrap()];
        for channel in CHANNELS {
            assert_eq!(pattern::any_matches(&conflate, channel), conflates(channel));
            assert_eq!(
                pattern::any_matches(&presence, channel),
                is_presence(channel)
            );
        }
    }
}
