//! How long an automatic rollback takes, from the first failing request to
//! the table swap, and how many client requests fail meanwhile.
//!
//! Real backends and a real proxy on loopback, steady keep-alive load; the
//! canary turns bad (fails `rate` of its requests) after a healthy warm-up.
//! Run with `cargo bench --bench rollback`; each case takes about 15 s.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

struct Canary {
    failing_rate: Mutex<f64>,
    first_failure: Mutex<Option<Instant>>,
}

async fn backend(canary: Option<Arc<Canary>>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let canary = canary.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_req: http::Request<hyper::body::Incoming>| {
                        let canary = canary.clone();
                        async move {
                            let mut status = 200;
                            if let Some(c) = &canary {
                                let rate = *c.failing_rate.lock().unwrap();
                                if rate > 0.0 && fastrand::f64() < rate {
                                    status = 500;
                                    c.first_failure
                                        .lock()
                                        .unwrap()
                                        .get_or_insert_with(Instant::now);
                                }
                            }
                            let mut r = http::Response::new(Full::new(Bytes::from_static(b"ok")));
                            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(r)
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

struct Case {
    interval: &'static str,
    canary_share: u32,
    rate: f64,
    rps: u64,
}

async fn run(case: &Case) -> String {
    let stable = backend(None).await;
    let canary = Arc::new(Canary {
        failing_rate: Mutex::new(0.0),
        first_failure: Mutex::new(None),
    });
    let canary_addr = backend(Some(canary.clone())).await;
    let yaml = format!(
        "listeners: [{{ addr: \"127.0.0.1:0\" }}]\nadmin: {{ addr: \"127.0.0.1:0\" }}\nroutes:\n  - name: api\n    backends:\n      - {{ name: stable, url: \"http://{stable}\", weight: 100 }}\n      - {{ name: canary, url: \"http://{canary_addr}\", weight: 0 }}\n    rollout:\n      baseline: stable\n      canary: canary\n      interval: {}\n      window: 30s\n      min_requests: 50\n      stages: [{{ weight: {}, bake: 1h }}]\n      gates: {{ success_rate: {{ warning: 99.8, critical: 99.5 }} }}\n",
        case.interval, case.canary_share
    );
    let doc = sluice::config::parse_document(&yaml, sluice::config::Syntax::Yaml).unwrap();
    let cfg = sluice::config::validate(doc, std::path::Path::new(".")).unwrap();
    let p = sluice::server::start(cfg, Default::default())
        .await
        .unwrap();
    let url = format!("http://{}/", p.proxy_addr());

    let stop = Arc::new(AtomicBool::new(false));
    let turned_bad = Arc::new(AtomicBool::new(false));
    let failed_after = Arc::new(AtomicU64::new(0));
    let sent_after = Arc::new(AtomicU64::new(0));
    let workers = 16u64;
    let pause = Duration::from_secs_f64(workers as f64 / case.rps as f64);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (url, stop, turned_bad, failed_after, sent_after) = (
            url.clone(),
            stop.clone(),
            turned_bad.clone(),
            failed_after.clone(),
            sent_after.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let c: hyper_util::client::legacy::Client<_, Full<Bytes>> =
                hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
            let mut tick = tokio::time::interval(pause);
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Relaxed) && Instant::now() < deadline {
                tick.tick().await;
                let after = turned_bad.load(Relaxed);
                let ok = match c
                    .request(
                        http::Request::get(&url)
                            .body(Full::new(Bytes::new()))
                            .unwrap(),
                    )
                    .await
                {
                    Ok(r) => {
                        let s = r.status().is_success();
                        let _ = r.into_body().collect().await;
                        s
                    }
                    Err(_) => false,
                };
                if after {
                    sent_after.fetch_add(1, Relaxed);
                    if !ok {
                        failed_after.fetch_add(1, Relaxed);
                    }
                }
            }
        }));
    }
    // Healthy warm-up: the canary builds a clean record first.
    tokio::time::sleep(Duration::from_secs(5)).await;
    *canary.failing_rate.lock().unwrap() = case.rate;
    turned_bad.store(true, Relaxed);
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut outcome = None;
    while Instant::now() < deadline {
        let events = p.control.journal.query(&sluice::journal::Query {
            route: Some("api".into()),
            ..Default::default()
        });
        if let Some(e) = events.iter().find(|e| e.kind == "rolled_back") {
            outcome = Some(e.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let first = *canary.first_failure.lock().unwrap();
    let line = match (outcome, first) {
        (Some(e), Some(first)) => {
            let completed = e.detail["completed_ms"].as_i64().unwrap();
            let first_ms =
                jiff::Timestamp::now().as_millisecond() - first.elapsed().as_millis() as i64;
            format!(
                "| {} | {} % | {:.0} % | {} | {} ms | {} µs | {} | {} of {} |",
                case.interval,
                case.canary_share,
                case.rate * 100.0,
                case.rps,
                completed - first_ms,
                e.detail["swap_us"],
                e.detail["canary_requests"],
                failed_after.load(Relaxed),
                sent_after.load(Relaxed)
            )
        }
        _ => format!(
            "| {} | {} % | {:.0} % | {} | not rolled back within 40 s | | | |",
            case.interval,
            case.canary_share,
            case.rate * 100.0,
            case.rps
        ),
    };
    p.shutdown().await;
    line
}

fn main() {
    // `cargo test --all-targets` runs benches once as tests, without
    // `--bench`: the measurement is for `cargo bench` only.
    if !std::env::args().any(|a| a == "--bench") {
        println!("rollback: measured by `cargo bench --bench rollback`; skipped under cargo test");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("| interval | canary share | canary failing | load (req/s) | first failure → swap | swap | canary requests in stage | client failures after the change |");
    println!("|---|---|---|---|---|---|---|---|");
    for case in [
        Case {
            interval: "1s",
            canary_share: 10,
            rate: 1.0,
            rps: 500,
        },
        Case {
            interval: "1s",
            canary_share: 10,
            rate: 0.10,
            rps: 500,
        },
        Case {
            interval: "100ms",
            canary_share: 10,
            rate: 0.10,
            rps: 500,
        },
        Case {
            interval: "30s",
            canary_share: 10,
            rate: 1.0,
            rps: 500,
        },
    ] {
        println!("{}", rt.block_on(run(&case)));
    }
}
