//! Nodes following a fake Redis ([`super::broker`]) under a seeded
//! schedule: publications, pushes read late, scripts run late, links that
//! drop and come back, pushes lost or doubled, subscribers that resume
//! with `since`, Redis losing everything. Each node is an [`Owner`] driven as the server's shard drives
//! it with the Redis engine (`src/shard/cluster.rs`: pushes through
//! `follow`, gaps and reconnects through `begin_fill`/`filled`, positions
//! through `broker_position`, a ask lost with its link through
//! `known_position`/`fill_failed`), with one subscriber per channel.
//!
//! Checked on every run: a live subscriber gets each publication of its
//! epoch once, in order, with the bytes Redis holds for it, and a change of
//! epoch only after a resync; a resume whose history is whole is answered
//! `recovered` with exactly what was missed; no resync without a loss (a
//! flush or a trimmed stream); once the schedule heals (links up, every
//! reply and push read) and each channel has one more publication, every
//! subscriber stands where Redis does.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::{
    broker::{Ask, FakeRedis, Inbound, Standing},
    rng::{seeds, Rng},
};
use crate::{
    owner::{Followed, HistoryLimits, Owner},
    protocol::PayloadKind,
    publication::{Payload, Position},
};

/// The epoch `known_position` answers for a channel never followed.
const UNAVAILABLE: &str = "unavailable";

fn payload(id: u64) -> Payload {
    Payload::new(PayloadKind::Json, Bytes::from(id.to_string()))
}

fn id_of(payload: &Payload) -> u64 {
    std::str::from_utf8(&payload.bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("a payload the simulation made")
}

#[derive(Debug, Clone)]
enum SubState {
    /// Waiting for its position (asked with `since`, if resuming).
    Pending {
        since: Option<(u64, String)>,
    },
    Live {
        epoch: String,
        last: u64,
    },
}

struct Sub {
    generation: u64,
    state: SubState,
}

struct Node {
    owner: Owner,
    /// One subscriber per channel this node wants.
    subs: BTreeMap<String, Sub>,
    /// Asks written on the link, not yet answered (answered in order).
    in_flight: Vec<Ask>,
}

/// How a run went wrong.
type Violation = String;

struct World {
    rng: Rng,
    redis: FakeRedis,
    nodes: Vec<Node>,
    channels: Vec<String>,
    /// Streams are trimmed below what the schedule publishes.
    bounded: bool,
    next_payload: u64,
    next_generation: u64,
    now_ms: u64,
    log: Vec<String>,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let nodes = 1 + rng.below(3);
        let channels = (0..1 + rng.below(3)).map(|c| format!("ch{c}")).collect();
        let bounded = rng.chance(400);
        let max_len = if bounded {
            1 + rng.below(6)
        } else {
            usize::MAX
        };
        let limits = HistoryLimits {
            // With Redis, history is Redis's.
            size: 0,
            ttl_ms: u64::MAX,
            max_bytes: usize::MAX,
        };
        let mut redis = FakeRedis::new(nodes, max_len);
        if rng.chance(500) {
            redis.push_loss = rng.below(100) as u64;
            redis.push_double = rng.below(100) as u64;
        }
        World {
            redis,
            nodes: (0..nodes)
                .map(|n| Node {
                    owner: Owner::new(limits, n as u64 + 1),
                    subs: BTreeMap::new(),
                    in_flight: Vec::new(),
                })
                .collect(),
            rng,
            channels,
            bounded,
            next_payload: 1,
            next_generation: 1,
            now_ms: 0,
            log: Vec::new(),
        }
    }

    /// Writes `ask` on the node's link; `false` if the link is down.
    fn ask(&mut self, node: usize, ask: Ask) -> bool {
        let link = &mut self.redis.links[node];
        if !link.up {
            return false;
        }
        link.outbound.push_back(ask.clone());
        self.nodes[node].in_flight.push(ask);
        true
    }

    fn subscribe(
        &mut self,
        node: usize,
        ch: &str,
        since: Option<(u64, String)>,
    ) -> Result<(), Violation> {
        let generation = self.next_generation;
        self.next_generation += 1;
        let link = &mut self.redis.links[node];
        if link.up {
            link.subscribed.insert(ch.to_owned());
        }
        let state = SubState::Pending {
            since: since.clone(),
        };
        self.nodes[node]
            .subs
            .insert(ch.to_owned(), Sub { generation, state });
        let ask = Ask::Position {
            ch: ch.to_owned(),
            sub: generation,
            since: since.clone(),
        };
        if !self.ask(node, ask) {
            let known = self.nodes[node].owner.known_position(ch, since.is_some());
            self.go_live(node, ch, generation, known)?;
        }
        Ok(())
    }

    /// The subscriber of `ch` leaves (the node's last: the channel is no
    /// longer wanted) and comes back with `since` its last publication.
    fn resume(&mut self, node: usize, ch: &str) -> Result<(), Violation> {
        let Some(sub) = self.nodes[node].subs.remove(ch) else {
            return self.subscribe(node, ch, None);
        };
        self.redis.links[node].subscribed.remove(ch);
        self.nodes[node].owner.unfollow(ch);
        let since = match sub.state {
            SubState::Live { epoch, last } if epoch != UNAVAILABLE => Some((last, epoch)),
            _ => None,
        };
        self.log
            .push(format!("node {node} resumes {ch} since {since:?}"));
        self.subscribe(node, ch, since)
    }

    fn go_live(
        &mut self,
        node: usize,
        ch: &str,
        generation: u64,
        position: Position,
    ) -> Result<(), Violation> {
        let Some(sub) = self.nodes[node].subs.get_mut(ch) else {
            return Ok(());
        };
        let SubState::Pending { since } = &sub.state else {
            return Ok(());
        };
        if sub.generation != generation {
            return Ok(());
        }
        let since = since.clone();
        self.log.push(format!(
            "node {node} {ch} live at {}:{} recovered {:?} missed {:?}",
            position.epoch,
            position.seq,
            position.recovered,
            position.missed.iter().map(|(s, _)| *s).collect::<Vec<_>>()
        ));
        if let Some((since_seq, since_epoch)) = since {
            if position.recovered == Some(true) {
                let seqs: Vec<u64> = position.missed.iter().map(|(s, _)| *s).collect();
                let expected: Vec<u64> = (since_seq + 1..=position.seq).collect();
                if seqs != expected {
                    return Err(format!("{ch}: recovered {seqs:?}, missed {expected:?}"));
                }
                for (seq, p) in &position.missed {
                    self.check_truth(ch, &position.epoch, *seq, id_of(p))?;
                }
            } else if !self.redis.flushed
                && !self.bounded
                && since_epoch == position.epoch
                && position.epoch != UNAVAILABLE
                && self.redis.links[node].up
            {
                return Err(format!(
                    "{ch}: a resume since {since_seq} not recovered, yet nothing was lost"
                ));
            }
        }
        let sub = self.nodes[node].subs.get_mut(ch).expect("still there");
        sub.state = SubState::Live {
            epoch: position.epoch,
            last: position.seq,
        };
        Ok(())
    }

    fn check_truth(&self, ch: &str, epoch: &str, seq: u64, id: u64) -> Result<(), Violation> {
        match self.redis.truth.get(&(epoch.to_owned(), seq)) {
            Some(truth) if *truth == id => Ok(()),
            truth => Err(format!(
                "{ch}: {epoch}:{seq} delivered as publication {id}, Redis made {truth:?}"
            )),
        }
    }

    /// The owner delivers publication `seq` of `ch` to the node's subscriber.
    fn deliver(&mut self, node: usize, ch: &str, seq: u64, id: u64) -> Result<(), Violation> {
        let epoch = self.nodes[node].owner.known_position(ch, false).epoch;
        self.log
            .push(format!("node {node} delivers {ch} {epoch}:{seq} ({id})"));
        let Some(sub) = self.nodes[node].subs.get(ch) else {
            return Ok(());
        };
        let SubState::Live {
            epoch: sub_epoch,
            last,
        } = sub.state.clone()
        else {
            return Ok(());
        };
        if sub_epoch != UNAVAILABLE {
            if sub_epoch != epoch {
                return Err(format!(
                    "{ch}: {epoch}:{seq} reached a subscriber of epoch {sub_epoch} without a resync"
                ));
            }
            if seq != last + 1 {
                return Err(format!("{ch}: {seq} delivered after {last}"));
            }
        }
        self.check_truth(ch, &epoch, seq, id)?;
        let sub = self.nodes[node].subs.get_mut(ch).expect("there");
        sub.state = SubState::Live { epoch, last: seq };
        Ok(())
    }

    /// Subscribers of `ch` start again at `seq` of the owner's epoch.
    fn resync(&mut self, node: usize, ch: &str, seq: u64) -> Result<(), Violation> {
        let epoch = self.nodes[node].owner.known_position(ch, false).epoch;
        self.log
            .push(format!("node {node} resyncs {ch} at {epoch}:{seq}"));
        if !self.redis.flushed && !self.bounded {
            return Err(format!("{ch}: a resync at {seq} though nothing was lost"));
        }
        if let Some(sub) = self.nodes[node].subs.get_mut(ch) {
            if matches!(sub.state, SubState::Live { .. }) {
                sub.state = SubState::Live { epoch, last: seq };
            }
        }
        Ok(())
    }

    fn fill(&mut self, node: usize, ch: &str, after: u64) {
        let ask = Ask::Fill {
            ch: ch.to_owned(),
            after,
        };
        if !self.ask(node, ask) {
            self.nodes[node].owner.fill_failed(ch);
        }
    }

    /// The node reads the next thing on its link.
    fn read(&mut self, node: usize) -> Result<(), Violation> {
        let Some(inbound) = self.redis.links[node].inbound.pop_front() else {
            return Ok(());
        };
        match inbound {
            Inbound::Push {
                ch,
                seq,
                epoch,
                payload: id,
            } => {
                let followed = self.nodes[node].owner.follow(
                    &ch,
                    (seq, &epoch),
                    &payload(id),
                    self.now_ms,
                    false,
                );
                match followed {
                    Followed::Deliver(ordered) => self.deliver(node, &ch, ordered.seq, id)?,
                    Followed::Resync(ordered) => {
                        self.resync(node, &ch, seq - 1)?;
                        self.deliver(node, &ch, ordered.seq, id)?;
                    }
                    Followed::Gap { after } => self.fill(node, &ch, after),
                    Followed::Drop => {}
                }
            }
            Inbound::Answer(ask, standing) => {
                if self.nodes[node].in_flight.is_empty() {
                    return Err("an answer to no ask".into());
                }
                self.nodes[node].in_flight.remove(0);
                self.answered(node, ask, standing)?;
            }
        }
        Ok(())
    }

    fn answered(&mut self, node: usize, ask: Ask, standing: Standing) -> Result<(), Violation> {
        let entries: Vec<(u64, Payload)> = standing
            .entries
            .iter()
            .map(|(s, id)| (*s, payload(*id)))
            .collect();
        match ask {
            Ask::Position { ch, sub, since } => {
                let since_ref = since.as_ref().map(|(s, e)| (*s, e.as_str()));
                let (position, resync) = self.nodes[node].owner.broker_position(
                    &ch,
                    (standing.top, &standing.epoch),
                    &entries,
                    since_ref,
                );
                if let Some(seq) = resync {
                    self.resync(node, &ch, seq)?;
                }
                self.go_live(node, &ch, sub, position)
            }
            Ask::Fill { ch, .. } => {
                let filled = self.nodes[node].owner.filled(
                    &ch,
                    (standing.top, &standing.epoch),
                    &entries,
                    self.now_ms,
                    false,
                );
                if let Some(seq) = filled.resync {
                    self.resync(node, &ch, seq)?;
                }
                for (ordered, p) in filled.deliver {
                    self.deliver(node, &ch, ordered.seq, id_of(&p))?;
                }
                if let Some(after) = filled.more {
                    self.fill(node, &ch, after);
                }
                Ok(())
            }
        }
    }

    /// The node's link drops: every ask in flight fails as the server's
    /// link fails them (positions from what the node knows, fills later).
    fn drop_link(&mut self, node: usize) -> Result<(), Violation> {
        self.log.push(format!("node {node} link down"));
        self.redis.drop_link(node);
        for ask in std::mem::take(&mut self.nodes[node].in_flight) {
            match ask {
                Ask::Position { ch, sub, since } => {
                    let known = self.nodes[node].owner.known_position(&ch, since.is_some());
                    self.go_live(node, &ch, sub, known)?;
                }
                Ask::Fill { ch, .. } => self.nodes[node].owner.fill_failed(&ch),
            }
        }
        Ok(())
    }

    /// The link is back: every wanted channel subscribed again, and each
    /// one followed filled from where the node stands.
    fn reconnect(&mut self, node: usize) {
        self.log.push(format!("node {node} link up"));
        let wanted: Vec<String> = self.nodes[node].subs.keys().cloned().collect();
        let link = &mut self.redis.links[node];
        link.up = true;
        link.subscribed.extend(wanted.iter().cloned());
        for ch in wanted {
            if let Some(after) = self.nodes[node].owner.begin_fill(&ch) {
                self.fill(node, &ch, after);
            }
        }
    }

    fn step(&mut self) -> Result<(), Violation> {
        self.now_ms += 1;
        let node = self.rng.below(self.nodes.len());
        let ch = self.channels[self.rng.below(self.channels.len())].clone();
        match self.rng.below(1000) {
            0..=299 => {
                let id = self.next_payload;
                self.next_payload += 1;
                self.log.push(format!("publish {ch} ({id})"));
                self.redis.publish(&ch, id, &mut self.rng);
            }
            300..=649 => self.read(node)?,
            650..=849 => self.redis.run_ask(node),
            850..=869 if self.redis.links[node].up => self.drop_link(node)?,
            870..=929 if !self.redis.links[node].up => self.reconnect(node),
            930..=979 => self.resume(node, &ch)?,
            980..=984 => {
                self.log.push("Redis flushed".into());
                self.redis.flush();
            }
            _ => {}
        }
        Ok(())
    }

    /// Links up, every ask run and every reply and push read.
    fn heal(&mut self) -> Result<(), Violation> {
        for node in 0..self.nodes.len() {
            if !self.redis.links[node].up {
                self.reconnect(node);
            }
        }
        for _ in 0..100_000 {
            let busy = (0..self.nodes.len()).find(|n| {
                let link = &self.redis.links[*n];
                !link.outbound.is_empty() || !link.inbound.is_empty()
            });
            let Some(node) = busy else { return Ok(()) };
            self.redis.run_ask(node);
            self.read(node)?;
        }
        Err("the schedule never settled".into())
    }

    fn check_settled(&self) -> Result<(), Violation> {
        for (n, node) in self.nodes.iter().enumerate() {
            for (ch, sub) in &node.subs {
                match &sub.state {
                    SubState::Pending { .. } => {
                        return Err(format!("node {n}: {ch} never went live"));
                    }
                    SubState::Live { epoch, .. } if epoch == UNAVAILABLE => {}
                    SubState::Live { epoch, last } => {
                        let Some(stream) = self.redis.streams.get(ch) else {
                            continue;
                        };
                        if (epoch, *last) != (&stream.epoch, stream.top) {
                            return Err(format!(
                                "node {n}: {ch} stands at {epoch}:{last}, Redis at {}:{}",
                                stream.epoch, stream.top
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn run(&mut self) -> Result<(), Violation> {
        for node in 0..self.nodes.len() {
            for ch in self.channels.clone() {
                self.subscribe(node, &ch, None)?;
            }
        }
        let steps = 50 + self.rng.below(300);
        for _ in 0..steps {
            self.step()?;
        }
        self.heal()?;
        // A channel Redis lost, or a push lost at its end, is not noticed
        // until the next publication: one each, without faults, then settle.
        (self.redis.push_loss, self.redis.push_double) = (0, 0);
        for ch in self.channels.clone() {
            let id = self.next_payload;
            self.next_payload += 1;
            self.redis.publish(&ch, id, &mut self.rng);
        }
        self.heal()?;
        self.check_settled()
    }
}

#[test]
fn owners_following_redis_deliver_one_order_without_loss_or_duplicate() {
    for seed in seeds(2000) {
        let mut world = World::new(seed);
        if let Err(violation) = world.run() {
            let tail: Vec<&String> = world.log.iter().rev().take(40).rev().collect();
            panic!(
                "seed {seed} ({} steps logged): {violation}\nreplay: SIM_SEED={seed} cargo test -p \
                 shardcast-core owners_following_redis\nlast events:\n{}",
                world.log.len(),
                tail.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
            );
        }
    }
}
