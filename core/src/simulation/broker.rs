//! A fake Redis as the Redis engine uses it: per channel, a stream of
//! publications under an epoch (the publish script's offset is the `seq`),
//! trimmed to a length; pub/sub pushes to the nodes subscribed; scripts
//! that answer where a channel stands and what its stream holds after a
//! `seq`. Each node reaches it over one connection that carries replies
//! and pushes in the order Redis made them (RESP3), and that can drop —
//! losing what was in flight both ways — and come back. Faults can be
//! injected into pushes: one lost (a gap), one written twice. A flush loses
//! every stream (Redis restarted empty): the next publication starts a new
//! epoch.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use super::rng::Rng;

/// One channel's stream.
pub(crate) struct Stream {
    pub(crate) epoch: String,
    pub(crate) top: u64,
    /// `(seq, payload id)`, oldest first, at most `max_len`.
    pub(crate) entries: VecDeque<(u64, u64)>,
}

/// What a node asks Redis.
#[derive(Debug, Clone)]
pub(crate) enum Ask {
    /// A subscription's position (generation `sub`), and what it missed
    /// after `since`.
    Position {
        ch: String,
        sub: u64,
        since: Option<(u64, String)>,
    },
    /// What the channel holds after `after` (a gap, a reconnect).
    Fill { ch: String, after: u64 },
}

/// Where a channel stands, as the scripts answer.
#[derive(Debug, Clone)]
pub(crate) struct Standing {
    pub(crate) top: u64,
    pub(crate) epoch: String,
    pub(crate) entries: Vec<(u64, u64)>,
}

/// What reaches a node on its connection.
#[derive(Debug, Clone)]
pub(crate) enum Inbound {
    Push {
        ch: String,
        seq: u64,
        epoch: String,
        payload: u64,
    },
    Answer(Ask, Standing),
}

/// One node's connection.
#[derive(Default)]
pub(crate) struct Link {
    pub(crate) up: bool,
    pub(crate) subscribed: BTreeSet<String>,
    /// Asks written, not yet run by Redis.
    pub(crate) outbound: VecDeque<Ask>,
    /// Replies and pushes Redis wrote, not yet read.
    pub(crate) inbound: VecDeque<Inbound>,
}

pub(crate) struct FakeRedis {
    /// Faults injected into pushes, per thousand: one lost on its way
    /// (a gap the node must notice), one written twice.
    pub(crate) push_loss: u64,
    pub(crate) push_double: u64,
    pub(crate) streams: HashMap<String, Stream>,
    pub(crate) links: Vec<Link>,
    max_len: usize,
    epochs_made: u64,
    /// Every publication ever made, by (epoch, seq): what a delivery must be.
    pub(crate) truth: BTreeMap<(String, u64), u64>,
    /// Streams were lost (a flush).
    pub(crate) flushed: bool,
}

impl FakeRedis {
    pub(crate) fn new(nodes: usize, max_len: usize) -> Self {
        FakeRedis {
            push_loss: 0,
            push_double: 0,
            streams: HashMap::new(),
            links: (0..nodes)
                .map(|_| Link {
                    up: true,
                    ..Link::default()
                })
                .collect(),
            max_len,
            epochs_made: 0,
            truth: BTreeMap::new(),
            flushed: false,
        }
    }

    fn stream(&mut self, ch: &str) -> &mut Stream {
        if !self.streams.contains_key(ch) {
            self.epochs_made += 1;
            let stream = Stream {
                epoch: format!("e{}", self.epochs_made),
                top: 0,
                entries: VecDeque::new(),
            };
            self.streams.insert(ch.to_owned(), stream);
        }
        self.streams.get_mut(ch).expect("just made")
    }

    /// The publish script, then the pub/sub push to every subscribed link
    /// (`rng` draws the faults).
    pub(crate) fn publish(&mut self, ch: &str, payload: u64, rng: &mut Rng) {
        let max_len = self.max_len;
        let stream = self.stream(ch);
        stream.top += 1;
        let (seq, epoch) = (stream.top, stream.epoch.clone());
        stream.entries.push_back((seq, payload));
        if stream.entries.len() > max_len {
            stream.entries.pop_front();
        }
        self.truth.insert((epoch.clone(), seq), payload);
        let (loss, double) = (self.push_loss, self.push_double);
        for link in self
            .links
            .iter_mut()
            .filter(|l| l.up && l.subscribed.contains(ch))
        {
            let push = Inbound::Push {
                ch: ch.to_owned(),
                seq,
                epoch: epoch.clone(),
                payload,
            };
            if rng.chance(loss) {
                continue;
            }
            if rng.chance(double) {
                link.inbound.push_back(push.clone());
            }
            link.inbound.push_back(push);
        }
    }

    /// Runs the oldest ask node `node` wrote; its answer follows every push
    /// already written to the node.
    pub(crate) fn run_ask(&mut self, node: usize) {
        let Some(ask) = self.links[node].outbound.pop_front() else {
            return;
        };
        let (ch, after) = match &ask {
            Ask::Position { ch, since, .. } => (ch.clone(), since.as_ref().map(|s| s.0)),
            Ask::Fill { ch, after } => (ch.clone(), Some(*after)),
        };
        let stream = self.stream(&ch);
        let entries: Vec<(u64, u64)> = match after {
            Some(after) => stream
                .entries
                .iter()
                .filter(|e| e.0 > after)
                .copied()
                .collect(),
            None => Vec::new(),
        };
        let standing = Standing {
            top: stream.top,
            epoch: stream.epoch.clone(),
            entries,
        };
        self.links[node]
            .inbound
            .push_back(Inbound::Answer(ask, standing));
    }

    /// The node's connection drops: what was in flight is lost.
    pub(crate) fn drop_link(&mut self, node: usize) {
        let link = &mut self.links[node];
        link.up = false;
        link.subscribed.clear();
        link.inbound.clear();
        link.outbound.clear();
    }

    /// Redis restarted empty: every stream and its epoch are gone.
    pub(crate) fn flush(&mut self) {
        self.streams.clear();
        self.flushed = true;
    }
}
