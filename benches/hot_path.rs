//! Micro-benchmarks of the request path's pieces: route match with 1, 100
//! and 10 000 routes, backend pick (weighted and sticky), stats recording,
//! and a whole table change (validate, compile, swap) with 10 000 routes.
//! `cargo bench --bench hot_path`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderMap, HeaderValue};
use sluice::config::{parse_document, validate, Syntax};
use sluice::control::{Change, ControlPlane};
use sluice::journal::Journal;
use sluice::stats::prom::Metrics;
use sluice::stats::Class;
use sluice::table::{Registry, Table};

/// `n` routes with exact hosts (each two backends, 90/10, sticky), then a catch-all.
fn yaml(n: usize) -> String {
    let mut y = String::from("listeners: [{ addr: \"127.0.0.1:0\" }]\nroutes:\n");
    for i in 0..n {
        y.push_str(&format!(
            "  - {{ name: r{i}, match: {{ host: h{i}.example.com, path_prefix: /api }}, sticky: {{ header: x-user-id }}, backends: [{{ name: stable, url: \"http://127.0.0.1:9000\", weight: 90 }}, {{ name: canary, url: \"http://127.0.0.1:9001\", weight: 10 }}] }}\n"
        ));
    }
    y.push_str("  - { name: rest, backends: [{ name: only, url: \"http://127.0.0.1:9002\" }] }\n");
    y
}

fn table(n: usize) -> Table {
    let cfg = validate(
        parse_document(&yaml(n), Syntax::Yaml).unwrap(),
        std::path::Path::new("."),
    )
    .unwrap();
    Registry::new(Metrics::new()).compile(Arc::new(cfg), 1)
}

fn route_match(c: &mut Criterion) {
    let headers = HeaderMap::new();
    for n in [1, 100, 10_000] {
        let t = table(n);
        let host = format!("h{}.example.com", n / 2);
        c.bench_function(&format!("route match, {n} routes, exact host"), |b| {
            b.iter(|| black_box(t.route(black_box(&host), "/api/users", &headers)).is_some())
        });
        c.bench_function(
            &format!("route match, {n} routes, falls through to the catch-all"),
            |b| b.iter(|| black_box(t.route(black_box("other.test"), "/", &headers)).is_some()),
        );
    }
}

fn backend_pick(c: &mut Criterion) {
    let t = table(1);
    let route = t
        .route("h0.example.com", "/api", &HeaderMap::new())
        .unwrap();
    let none = HeaderMap::new();
    let mut sticky = HeaderMap::new();
    sticky.insert("x-user-id", HeaderValue::from_static("user-1234567"));
    c.bench_function("backend pick, weighted", |b| {
        b.iter(|| black_box(route.pick(black_box(&none))))
    });
    c.bench_function("backend pick, sticky header", |b| {
        b.iter(|| black_box(route.pick(black_box(&sticky))))
    });
}

fn stats_record(c: &mut Criterion) {
    // Stats made for two workers, as on a two-core machine.
    sluice::worker::reserve(2);
    let t = table(1);
    let stats = t.routes[0].backends[0].stats.clone();
    c.bench_function("stats record (window, lifetime, Prometheus)", |b| {
        b.iter(|| {
            stats.record(
                black_box(Class::Success2xx),
                black_box(Duration::from_micros(850)),
            )
        })
    });
    // Two workers serving one backend record into shards of their own; two
    // threads counted as the same worker (more workers than shards) write
    // the same atomics, the price of a record whose cache lines another
    // core keeps taking away; a thread recording into a backend of its own
    // is the floor.
    let t2 = table(2);
    let other = t2.routes[1].backends[0].stats.clone();
    for (name, theirs, worker) in [
        (
            "stats record, another worker recording into the same backend",
            stats.clone(),
            1,
        ),
        (
            "stats record, another thread in the same shard of the same backend",
            stats.clone(),
            0,
        ),
        (
            "stats record, another core recording into another backend",
            other,
            1,
        ),
    ] {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let rival = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                sluice::worker::set_current(worker);
                // Bounded: stops when told, or after a minute at most.
                let until = std::time::Instant::now() + Duration::from_secs(60);
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && std::time::Instant::now() < until
                {
                    for _ in 0..1_000 {
                        theirs.record(Class::Success2xx, Duration::from_micros(900));
                    }
                }
            })
        };
        c.bench_function(name, |b| {
            b.iter(|| {
                stats.record(
                    black_box(Class::Success2xx),
                    black_box(Duration::from_micros(850)),
                )
            })
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        rival.join().unwrap();
    }
}

fn table_swap(c: &mut Criterion) {
    let cfg = validate(
        parse_document(&yaml(10_000), Syntax::Yaml).unwrap(),
        std::path::Path::new("."),
    )
    .unwrap();
    let control = ControlPlane::new(
        cfg,
        ".".into(),
        Metrics::new(),
        Arc::new(Journal::open(None).unwrap()),
        None,
        "bench",
    );
    let mut flip = 0u64;
    let mut group = c.benchmark_group("table change");
    group.sample_size(10);
    group.bench_function(
        "weights of one route, 10 000 routes: validate, compile, swap",
        |b| {
            b.iter_batched(
                || {
                    flip += 1;
                    Change::Weights {
                        route: "r5000".into(),
                        weights: [("canary".to_string(), flip % 50 + 1)].into(),
                    }
                },
                |change| control.apply(change, "bench", None).unwrap(),
                BatchSize::SmallInput,
            )
        },
    );
    group.finish();
}

criterion_group!(benches, route_match, backend_pick, stats_record, table_swap);
criterion_main!(benches);
