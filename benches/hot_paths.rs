//! Micro-benchmarks of the hot paths: parsing a client envelope, encoding
//! the `msg` frame, fanning one publication out to 10,000 in-memory
//! connection queues (encode once, push the same bytes everywhere), and
//! picking one `GET /api/channels` page of a shard's 250,000 channels
//! (against sorting them all, as pages were before issue 24).
//! `cargo bench --bench hot_paths`; throughput is reported in bytes or
//! elements so results compare across machines.

use std::{rc::Rc, time::Duration};

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shardcast::{
    internals::{
        first_names, Codec, Conn, ConnRef, DeflateSettings, Deflater, Flusher, Index, Payload,
        Stats,
    },
    protocol::{self, PayloadKind, SubOptions},
};

const ENVELOPE: &str = r#"{"op":"pub","ch":"news","data":{"s":1,"i":0,"t":123456789,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"},"id":42}"#;

fn envelope_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Bytes(ENVELOPE.len() as u64));
    group.bench_function("parse_pub", |b| {
        b.iter(|| protocol::parse_client_op(black_box(ENVELOPE)).is_ok())
    });
    group.finish();
}

fn frame_encode(c: &mut Criterion) {
    let data = br#"{"s":1,"i":0,"t":123456789,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("encode_msg_envelope", |b| {
        b.iter(|| {
            protocol::encode_msg(
                black_box("news"),
                black_box(42),
                PayloadKind::Json,
                black_box(data),
            )
        })
    });
    group.bench_function("encode_raw", |b| {
        b.iter(|| protocol::encode_raw(PayloadKind::Text, black_box(data)))
    });
    group.finish();
}

fn fan_out(c: &mut Criterion) {
    const SUBSCRIBERS: usize = 10_000;
    let mut group = c.benchmark_group("fan_out");
    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    let chat = "alice: are we still on for lunch at noon? bob: yes, the usual place. ".repeat(14);
    let data = format!(r#"{{"s":1,"t":2,"text":"{chat}"}}"#);
    let payload = Payload::new(PayloadKind::Json, Bytes::from(data));
    // The same 1 KB publication to plain subscribers and to subscribers that
    // negotiated permessage-deflate (compressed once for all of them).
    for (name, codec) in [
        ("one_1kb_publication_to_10k_queues", Codec::JSON),
        (
            "one_1kb_publication_to_10k_deflate_queues",
            Codec {
                deflate_window: 15,
                ..Codec::JSON
            },
        ),
    ] {
        group.bench_function(name, |b| {
            let mut deflater = Deflater::new(DeflateSettings {
                min_bytes: 256,
                level: 3,
            });
            b.iter_batched(
                || {
                    // Fresh, empty queues each batch so the byte bound never bites.
                    let mut index = Index::new(shardcast::Config::default().conflation.after_bytes);
                    // A fresh flush pass too: every queue marks itself dirty on it.
                    let flusher = Rc::new(Flusher::new(Rc::new(Stats::default()), Duration::ZERO));
                    let conns: Vec<Rc<Conn>> = (0..SUBSCRIBERS as u32)
                        .map(|key| {
                            let id = ConnRef { key, gen: 1 };
                            Rc::new(Conn::new(
                                id,
                                codec,
                                1 << 20,
                                0,
                                flusher.clone(),
                                None,
                                false,
                            ))
                        })
                        .collect();
                    for conn in &conns {
                        index.insert("news", conn, None, false, SubOptions::default());
                    }
                    (index, conns, flusher)
                },
                |(mut index, conns, flusher)| {
                    let result = index.fan_out(0, ("news", 1, &payload), None, None, &mut deflater);
                    assert_eq!(result.queued, SUBSCRIBERS as u64);
                    (index, conns, flusher)
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn channel_page(c: &mut Criterion) {
    const CHANNELS: usize = 250_000;
    // In a hash map's order, as a shard's index hands them over.
    let names: Vec<String> = {
        let set: std::collections::HashSet<String> =
            (0..CHANNELS).map(|i| format!("room.{i}")).collect();
        set.into_iter().collect()
    };
    let mut group = c.benchmark_group("channel_page");
    group.throughput(Throughput::Elements(CHANNELS as u64));
    group.sample_size(20);
    for limit in [1, 100, 1000] {
        group.bench_function(format!("first_{limit}_of_250k"), |b| {
            b.iter(|| {
                let page = first_names(names.iter().map(String::as_str), limit, |_| true);
                black_box(page.len())
            })
        });
    }
    group.bench_function("sort_all_250k_then_take_1", |b| {
        b.iter(|| {
            let mut all: Vec<&str> = names.iter().map(String::as_str).collect();
            all.sort_unstable();
            all.dedup();
            all.truncate(1);
            black_box(all.len())
        })
    });
    group.finish();
}

criterion_group!(benches, envelope_parse, frame_encode, fan_out, channel_page);
criterion_main!(benches);
