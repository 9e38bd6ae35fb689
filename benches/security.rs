//! Micro-benchmarks of what security adds: verifying a connection token
//! (HS256, RS256, ES256) once per connection, and per operation the channel
//! permission check and the publish token bucket.
//! `cargo bench --bench security`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use shardcast::internals::{ring_jwt, unix_now, Access, RateLimit, TokenBucket, Verifier};

const SECRET: &str = "a-bench-secret-that-is-long-enough-for-hs256";

fn claims() -> serde_json::Value {
    serde_json::json!({
        "sub": "42",
        "exp": unix_now() + 3600,
        "channels": {"sub": ["news", "user.42.*", "chat.>"], "pub": ["chat.>"]},
    })
}

/// Verification as the server does it: with ring installed as
/// jsonwebtoken's provider. `SHARDCAST_BENCH_JWT=rust_crypto` measures
/// jsonwebtoken's pure-Rust default instead (the provider is chosen once
/// per process).
/// A verifier with the HS256 secret and a token it accepts.
fn hs256() -> (Verifier, String) {
    let verifier = Verifier::new(Some(SECRET), None, None, None).unwrap();
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    (verifier, token)
}

fn token_verify(c: &mut Criterion) {
    let rust_crypto = std::env::var("SHARDCAST_BENCH_JWT").is_ok_and(|v| v == "rust_crypto");
    if !rust_crypto {
        ring_jwt::install();
    }
    let mut group = c.benchmark_group(if rust_crypto {
        "token_verify_rust_crypto"
    } else {
        "token_verify"
    });
    let (hs, token) = hs256();
    group.bench_function("hs256", |b| {
        b.iter(|| hs.verify(black_box(&token), unix_now()).is_ok())
    });

    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let rsa_public = std::fs::read(format!("{dir}/rsa_public.pem")).unwrap();
    let rsa_private = std::fs::read(format!("{dir}/rsa_private.pem")).unwrap();
    let rs = Verifier::new(None, Some(&rsa_public), None, None).unwrap();
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims(),
        &EncodingKey::from_rsa_pem(&rsa_private).unwrap(),
    )
    .unwrap();
    group.bench_function("rs256", |b| {
        b.iter(|| rs.verify(black_box(&token), unix_now()).is_ok())
    });

    let pair = rcgen::KeyPair::generate().unwrap();
    let es = Verifier::new(None, Some(pair.public_key_pem().as_bytes()), None, None).unwrap();
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &claims(),
        &EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    group.bench_function("es256", |b| {
        b.iter(|| es.verify(black_box(&token), unix_now()).is_ok())
    });
    group.finish();
}

fn per_operation(c: &mut Criterion) {
    let mut group = c.benchmark_group("per_op");
    let (hs, token) = hs256();
    let grant = hs.verify(&token, unix_now()).unwrap();
    group.bench_function("permission_exact", |b| {
        b.iter(|| grant.allows(Access::Subscribe, black_box("news")))
    });
    group.bench_function("permission_wildcard", |b| {
        b.iter(|| grant.allows(Access::Publish, black_box("chat.lobby.7")))
    });
    let limit = RateLimit {
        per_second: 1_000_000,
        burst: 1_000_000,
    };
    let bucket = TokenBucket::new(limit, 0);
    let mut now = 0u64;
    group.bench_function("rate_bucket_take", |b| {
        b.iter(|| {
            now += 1;
            bucket.take(limit, black_box(now))
        })
    });
    group.finish();
}

criterion_group!(benches, token_verify, per_operation);
criterion_main!(benches);
