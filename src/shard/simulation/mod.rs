//! A deterministic simulation of a node's shards (issue 25, item 3): N
//! shards with the memory engine on one test executor, the mesh messages
//! between them delivered one at a time in an order a seeded schedule
//! picks (each link stays FIFO, as the real lanes are), and simulated JSON
//! clients that subscribe, resume, publish, ask who is present and come
//! and go between the deliveries. Every run checks the invariants of
//! `invariants.rs` as the clients read and once the run is quiet. A failing
//! seed prints itself, the broken invariant and the channel's events (from
//! a traced replay of the same seed) and replays with `SIM_SEED`.
//!
//! `SIM_SEEDS=N` runs seeds `1..=N` (default [`DEFAULT_SEEDS`]);
//! `SIM_SEED=S` runs seed `S` alone, traced.
//!
//! The parts: `schedule.rs` (what a seed makes of a run), `client.rs`
//! (the clients), `invariants.rs` (the checks), `envelope.rs` (reading the
//! frames), `rng.rs` (the choices), and `driver.rs`, the only file that
//! knows the shard. Time: the shard reads its own clock (`Shard::now_ms`,
//! `clock::now_ns`); runs last far less than any timeout or TTL they set,
//! so nothing expires and time does not change what a run does.

mod client;
mod driver;
mod envelope;
mod invariants;
mod rng;
mod schedule;

use std::collections::BTreeSet;

use self::{
    client::{Client, Op, Server},
    driver::World,
    envelope::Envelope,
    invariants::{Checker, Note, Violation},
    schedule::{is_presence, Schedule, Setup, Step},
};
use crate::config::Config;

/// Seeds a test run tries unless `SIM_SEEDS` says otherwise.
const DEFAULT_SEEDS: u64 = 2000;

/// What runs did: how much was exercised, and a digest of every frame the
/// clients read (the same seed must read the same).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Tally {
    runs: u64,
    steps: u64,
    deliveries: u64,
    counts: invariants::Counts,
    digest: u64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.runs += other.runs;
        self.steps += other.steps;
        self.deliveries += other.deliveries;
        self.counts.add(&other.counts);
        self.digest ^= other.digest;
    }
}

/// A run that broke an invariant.
struct Failure {
    setup: Setup,
    violation: Violation,
    notes: Vec<Note>,
}

/// Runs seed `seed` (recording every event when `traced`).
fn run(seed: u64, base: &Config, traced: bool) -> Result<Tally, Box<Failure>> {
    let mut schedule = Schedule::new(seed);
    let setup = schedule.setup.clone();
    let mut world = World::new(&setup, base);
    let mut clients: Vec<Client> = (0..setup.clients)
        .map(|index| Client::new(index, &mut schedule.rng))
        .collect();
    let mut checker = Checker::new(&setup, traced);
    let mut tally = Tally {
        runs: 1,
        ..Tally::default()
    };
    let mut waiting = Vec::new();
    for step in 0..setup.steps {
        checker.set_step(step);
        world.waiting_links(&mut waiting);
        match schedule.next(waiting.len()) {
            Step::Deliver(n) => {
                tally.deliveries += 1;
                if let Some(text) = world.deliver(waiting[n], traced) {
                    checker.note(|| text);
                }
            }
            Step::Act(client) => {
                clients[client].act(&mut world, &setup.channels, &mut schedule.rng, &mut checker)
            }
            Step::Sweep(shard) => {
                checker.note(|| format!("shard {shard} sweeps its history"));
                world.sweep(shard);
            }
        }
        tally.steps += 1;
        if checker.violation().is_some() {
            break;
        }
    }
    if checker.violation().is_none() {
        checker.set_step(setup.steps);
        tally.deliveries += quiesce(&mut world, &mut clients, &mut schedule, &mut checker);
        check_quiet(&mut world, &clients, &setup, &mut checker);
    }
    if let Some(violation) = checker.violation() {
        return Err(Box::new(Failure {
            setup,
            violation: violation.clone(),
            notes: checker.notes().to_vec(),
        }));
    }
    tally.counts = checker.counts().clone();
    tally.digest = world.digest();
    Ok(tally)
}

/// Delivers every message, in an order the schedule picks, and lets the
/// clients read everything, until nothing moves. Returns the deliveries.
fn quiesce(
    world: &mut World,
    clients: &mut [Client],
    schedule: &mut Schedule,
    checker: &mut Checker,
) -> u64 {
    let (mut waiting, mut deliveries) = (Vec::new(), 0);
    loop {
        let mut moved = false;
        loop {
            world.waiting_links(&mut waiting);
            if waiting.is_empty() {
                break;
            }
            let link = waiting[schedule.rng.below(waiting.len())];
            if let Some(text) = world.deliver(link, checker.traced()) {
                checker.note(|| text);
            }
            deliveries += 1;
            moved = true;
        }
        for client in clients.iter_mut() {
            moved |= client.settle(world, checker);
        }
        if !moved {
            return deliveries;
        }
    }
}

/// The checks of a quiet run: every op answered, every live stream
/// complete, and presence lists that agree with who is subscribed.
fn check_quiet(world: &mut World, clients: &[Client], setup: &Setup, checker: &mut Checker) {
    for client in clients {
        if client.unanswered() > 0 {
            let detail = format!(
                "client {}: {} ops unanswered",
                client.index,
                client.unanswered()
            );
            checker.fail("every op with an id is answered", None, detail);
        }
        if let Some((_, subscribed)) = client.live() {
            for ch in subscribed {
                checker.live_stream_complete(client.index, ch);
            }
        }
    }
    checker.unrecovered_explained(world.replays_refused());
    for ch in setup.channels.iter().copied().filter(|ch| is_presence(ch)) {
        let members: BTreeSet<String> = clients
            .iter()
            .filter_map(Client::live)
            .filter(|(_, subscribed)| subscribed.contains(ch))
            .map(|(conn, _)| world.member_id(conn))
            .collect();
        for shard in 0..setup.shards {
            ask_presence(world, ch, shard, &members, checker);
        }
    }
}

/// Asks shard `shard` who is present on `ch`, page by page from a
/// connection of its own, and checks the answer against `members`.
fn ask_presence(
    world: &mut World,
    ch: &'static str,
    shard: usize,
    members: &BTreeSet<String>,
    checker: &mut Checker,
) {
    let probe = world.connect(shard);
    let (mut listed, mut cursor, mut waiting) = (Vec::new(), None, Vec::new());
    for id in 1.. {
        world.send(probe, &Op::Presence { ch, id, cursor });
        loop {
            world.waiting_links(&mut waiting);
            let Some(link) = waiting.first() else { break };
            world.deliver(*link, false);
        }
        let answers = world.receive(probe);
        let page = match answers
            .iter()
            .map(|text| envelope::parse(text))
            .collect::<Vec<_>>()[..]
        {
            [Ok(Envelope::Presence {
                ref members,
                count,
                cursor: ref next,
                ..
            })] if !members.is_empty() || next.is_none() => (members.clone(), count, next.clone()),
            ref other => {
                let detail = format!("shard {shard} answered {other:?}");
                checker.fail("presence answers what was asked", Some(ch), detail);
                break;
            }
        };
        listed.extend(page.0);
        cursor = page.2;
        if cursor.is_none() {
            checker.presence(ch, shard, (&listed, page.1), members);
            break;
        }
    }
    world.disconnect(probe);
}

/// The seeds to run: `SIM_SEED` alone, or `1..=SIM_SEEDS` (as the core's
/// simulations count them).
fn seeds() -> (std::ops::RangeInclusive<u64>, bool) {
    let var = |name| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    match (var("SIM_SEED"), var("SIM_SEEDS")) {
        (Some(seed), _) => (seed..=seed, true),
        (None, count) => (1..=count.unwrap_or(DEFAULT_SEEDS), false),
    }
}

/// How a failing seed is told: the seed, where the run broke, the broken
/// invariant, and the events of its channel.
fn report(seed: u64, failure: &Failure) -> String {
    const MOST_EVENTS: usize = 400;
    let Failure {
        setup,
        violation,
        notes,
    } = failure;
    let channel = violation.channel.as_deref();
    let events: Vec<&Note> = notes
        .iter()
        .filter(|note| channel.is_none_or(|ch| note.text.contains(ch)))
        .collect();
    let mut out = format!(
        "simulation seed {seed} broke {:?} at step {} of {} ({})\n  {}\n{setup:?}\n",
        violation.invariant,
        violation.step,
        setup.steps,
        channel.unwrap_or("no one channel"),
        violation.detail,
    );
    let shown = &events[events.len().saturating_sub(MOST_EVENTS)..];
    out += &format!(
        "events of {} ({} of {}):\n",
        channel.unwrap_or("the run"),
        shown.len(),
        events.len()
    );
    for note in shown {
        out += &format!("  [{}] {}\n", note.step, note.text);
    }
    out += &format!("replay: SIM_SEED={seed} cargo test --lib shard::simulation\n");
    out
}

/// Runs `seeds`; on the first failure, replays it traced and panics with
/// its report (with `SIM_KEEP_GOING` set, first lists every failing seed).
fn run_seeds(seeds: std::ops::RangeInclusive<u64>, traced: bool) -> Tally {
    let keep_going = std::env::var_os("SIM_KEEP_GOING").is_some();
    crate::sync::on_test_executor(async move {
        let base = Config::default();
        let mut total = Tally::default();
        let mut failed = None;
        for seed in seeds {
            match run(seed, &base, traced) {
                Ok(tally) => total.add(&tally),
                Err(failure) if keep_going => {
                    let Violation {
                        invariant,
                        channel,
                        detail,
                        ..
                    } = &failure.violation;
                    eprintln!("seed {seed}: {invariant:?} ({channel:?}) {detail}");
                    failed.get_or_insert(seed);
                }
                Err(failure) => {
                    let traced = run(seed, &base, true);
                    let report = match &traced {
                        Err(replayed) => report(seed, replayed),
                        Ok(_) => format!(
                            "{}the traced replay did not fail: the run is not deterministic",
                            report(seed, &failure)
                        ),
                    };
                    panic!("{report}");
                }
            }
        }
        if let Some(seed) = failed {
            panic!("seeds failed, the first: SIM_SEED={seed}");
        }
        total
    })
}

#[test]
fn every_seed_keeps_every_invariant() {
    let (seeds, traced) = seeds();
    let count = seeds.end() + 1 - seeds.start();
    let tally = run_seeds(seeds, traced);
    eprintln!("simulation: {count} seeds: {tally:?}");
    let counts = &tally.counts;
    if count >= 500 {
        // The runs reach what they are meant to check.
        assert!(counts.conflated > 0, "conflation is exercised: {counts:?}");
        assert!(counts.recovered > 0 && counts.unrecovered > 0, "{counts:?}");
        assert!(counts.presence_checked > 0, "{counts:?}");
        assert!(counts.live_streams_checked > 0, "{counts:?}");
        assert!(
            counts.newest_checked > 0 && counts.server_closes > 0,
            "{counts:?}"
        );
    }
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [1, 17, 4242] {
        let first = run_seeds(seed..=seed, false);
        assert_eq!(first, run_seeds(seed..=seed, true), "seed {seed}");
        assert!(first.counts.msgs > 0, "seed {seed} reads something");
    }
}
