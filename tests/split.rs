//! Traffic splitting through a real proxy: weighted shares, sticky users,
//! the override header, the same assignment from two processes, and
//! shadow traffic.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_is_within_three_standard_deviations() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let p = start_proxy(&route_yaml(
        "",
        &[("stable", stable.url(), 90), ("canary", canary.url(), 10)],
    ))
    .await;
    let c = client();
    let url = format!("http://{}/", p.proxy_addr());
    let n = 4000u64;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move {
                for _ in 0..n / 8 {
                    assert_eq!(get(&c, &url, &[]).await.0, 200);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let got = canary.state.seen() as f64;
    let (mean, sd) = (n as f64 * 0.1, (n as f64 * 0.1 * 0.9).sqrt());
    assert_eq!(stable.state.seen() + canary.state.seen(), n);
    assert!(
        (got - mean).abs() <= 3.0 * sd,
        "canary got {got} of {n}; expected {mean} ± {}",
        3.0 * sd
    );
    p.shutdown().await;
}

async fn assignments(url: &str, users: std::ops::Range<u32>) -> Vec<String> {
    let c = client();
    let mut out = Vec::new();
    for u in users {
        let id = format!("user-{u}");
        let (s, body) = get(&c, url, &[("x-user-id", &id)]).await;
        assert_eq!(s, 200);
        out.push(who(&body).to_string());
    }
    out
}

const STICKY: &str = "sticky: { header: x-user-id }\noverride_header: x-sluice-backend";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_users_stay_and_only_move_forward() {
    let b = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let p = start_proxy(&route_yaml(
        STICKY,
        &[
            ("a", b[0].url(), 70),
            ("b", b[1].url(), 20),
            ("c", b[2].url(), 10),
        ],
    ))
    .await;
    let url = format!("http://{}/", p.proxy_addr());
    let first = assignments(&url, 0..600).await;
    let again = assignments(&url, 0..600).await;
    assert_eq!(first, again, "the same user must land on the same backend");
    let share_c = first.iter().filter(|w| *w == "c").count();
    assert!(
        (30..=100).contains(&share_c),
        "c should own about 10% of users, got {share_c}/600"
    );

    // Move weight from the first backend to the last.
    let c = client();
    let (s, _, body) = send(
        &c,
        "PUT",
        &format!("http://{}/routes/api/weights", p.admin_addr),
        &[],
        r#"{"a": 40, "c": 40}"#,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let after = assignments(&url, 0..600).await;
    let order = |w: &str| ["a", "b", "c"].iter().position(|x| *x == w).unwrap();
    let mut moved = 0;
    for (u, (x, y)) in first.iter().zip(&after).enumerate() {
        assert!(order(y) >= order(x), "user-{u} moved back from {x} to {y}");
        moved += (x != y) as usize;
    }
    assert!(
        moved > 100,
        "moving 30% of the weight should move users, moved {moved}"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_assign_users_alike() {
    let s1 = Backend::start("stable").await;
    let c1 = Backend::start("canary").await;
    let s2 = Backend::start("stable").await;
    let c2 = Backend::start("canary").await;
    let p1 = start_proxy(&route_yaml(
        STICKY,
        &[("stable", s1.url(), 75), ("canary", c1.url(), 25)],
    ))
    .await;
    let p2 = start_proxy(&route_yaml(
        STICKY,
        &[("stable", s2.url(), 75), ("canary", c2.url(), 25)],
    ))
    .await;
    let a1 = assignments(&format!("http://{}/", p1.proxy_addr()), 0..400).await;
    let a2 = assignments(&format!("http://{}/", p2.proxy_addr()), 0..400).await;
    assert_eq!(a1, a2);
    // And they agree with the documented function.
    for (u, w) in a1.iter().enumerate() {
        let bucket = sluice::split::bucket("api", format!("user-{u}").as_bytes());
        assert_eq!(
            w,
            if bucket < 7500 { "stable" } else { "canary" },
            "user-{u} bucket {bucket}"
        );
    }
    p1.shutdown().await;
    p2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_and_override_header() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let p = start_proxy(&route_yaml(
        "sticky: { cookie: uid }\noverride_header: x-sluice-backend",
        &[("stable", stable.url(), 100), ("canary", canary.url(), 0)],
    ))
    .await;
    let c = client();
    let url = format!("http://{}/", p.proxy_addr());
    for u in 0..50 {
        let cookie = format!("theme=dark; uid=u{u}");
        assert_eq!(
            who(&get(&c, &url, &[("cookie", &cookie)]).await.1),
            "stable"
        );
    }
    // Testers reach a backend by name, even at weight 0.
    assert_eq!(
        who(&get(&c, &url, &[("x-sluice-backend", "canary")]).await.1),
        "canary"
    );
    // An unknown name falls back to the split.
    assert_eq!(
        who(&get(&c, &url, &[("x-sluice-backend", "nope")]).await.1),
        "stable"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_host_path_and_headers_first_match_wins() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let d = Backend::start("d").await;
    let yaml = format!(
        "listeners: [{{ addr: 127.0.0.1:0 }}]\nadmin: {{ addr: 127.0.0.1:0 }}\nroutes:\n\
  - {{ name: beta, match: {{ host: api.example.com, headers: {{ x-env: beta }} }}, backends: [{{ name: a, url: \"{}\" }}] }}\n\
  - {{ name: api-v2, match: {{ host: api.example.com, path_prefix: /v2 }}, backends: [{{ name: b, url: \"{}\" }}] }}\n\
  - {{ name: wild, match: {{ host: \"*.example.com\" }}, backends: [{{ name: c, url: \"{}\" }}] }}\n\
  - {{ name: rest, backends: [{{ name: d, url: \"{}\" }}] }}\n",
        a.url(), b.url(), c.url(), d.url()
    );
    let p = start_proxy(&yaml).await;
    let cl = client();
    let base = format!("http://{}", p.proxy_addr());
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("API.example.com:8080", "/v2/x", &[("x-env", "beta")], "a"),
        ("api.example.com", "/v2/users", &[], "b"),
        ("api.example.com", "/v1/users", &[], "c"),
        ("www.example.com", "/", &[], "c"),
        ("example.com", "/", &[], "d"),
        ("other.test", "/v2", &[], "d"),
    ];
    for (host, path, headers, want) in cases {
        let mut h = vec![("host", *host)];
        h.extend_from_slice(headers);
        let (s, body) = get(&cl, &format!("{base}{path}"), &h).await;
        assert_eq!(
            (s.as_u16(), who(&body)),
            (200, *want),
            "{host}{path} {headers:?}"
        );
    }
    p.shutdown().await;
}

const REQUESTS: &str = "sluice_requests_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_gets_a_copy_of_each_request_and_the_client_never_sees_it() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let p = start_proxy(&route_yaml(
        "mirror: { backend: canary, percent: 100 }",
        &[("stable", stable.url(), 100), ("canary", canary.url(), 0)],
    ))
    .await;
    let c = client();
    let url = format!("http://{}/", p.proxy_addr());
    let body = "x".repeat(100_000);
    for i in 0..10 {
        let (s, _, answer) = send(
            &c,
            "POST",
            &url,
            &[("host", "shop.test:8080")],
            body.clone(),
        )
        .await;
        assert_eq!(
            (s.as_u16(), answer.as_str()),
            (200, "stable 100000"),
            "request {i}"
        );
        let (s, answer) = get(&c, &url, &[("host", "shop.test")]).await;
        assert_eq!(
            (s.as_u16(), answer.as_str()),
            (200, "stable 0"),
            "request {i}"
        );
    }
    // The copies carried the bodies whole (the backend counts a body once
    // it has read all of it) and a host marked as a copy; and they count
    // for the mirror backend, as any request would, once answered.
    let bytes = || {
        canary
            .state
            .body_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let within = std::time::Duration::from_secs(10);
    eventually(within, "the copies' bodies", || bytes() == 10 * 100_000).await;
    let canary_2xx = [("backend", "canary"), ("class", "2xx")];
    let m = wait_metric(&p, REQUESTS, &canary_2xx, 20.0, within).await;
    assert_eq!(
        metric(&m, REQUESTS, &[("backend", "stable"), ("class", "2xx")]),
        20.0
    );
    assert_eq!((stable.state.seen(), canary.state.seen()), (20, 20));
    let host = |b: &Backend| {
        let h = b.state.last_headers.lock().unwrap().clone().unwrap();
        h.get("host").unwrap().to_str().unwrap().to_string()
    };
    // Every request named shop.test, with a port or without.
    assert!(
        host(&canary).starts_with("shop.test-shadow"),
        "{}",
        host(&canary)
    );
    assert_eq!(host(&stable), "shop.test");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_takes_its_share_and_never_holds_up_the_request() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let p = start_proxy(&route_yaml(
        "mirror: { backend: canary, percent: 25 }\ntimeout: 5s",
        &[("stable", stable.url(), 100), ("canary", canary.url(), 0)],
    ))
    .await;
    let c = client();
    let url = format!("http://{}/", p.proxy_addr());
    let n = 800u64;
    for _ in 0..n {
        assert_eq!(get(&c, &url, &[]).await.0, 200);
    }
    let (mean, sd) = (n as f64 * 0.25, (n as f64 * 0.25 * 0.75).sqrt());
    let lower = (mean - 4.0 * sd) as u64;
    eventually(std::time::Duration::from_secs(10), "the copies", || {
        canary.state.seen() >= lower
    })
    .await;
    let got = canary.state.seen() as f64;
    assert!(
        (got - mean).abs() <= 4.0 * sd,
        "mirror got {got} of {n}; expected {mean} ± {}",
        4.0 * sd
    );

    // A mirror that takes seconds to answer: every request still gets its
    // answer from its own backend, long before the mirror's.
    canary
        .state
        .delay_ms
        .store(3_000, std::sync::atomic::Ordering::Relaxed);
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let (s, answer) = get(&c, &url, &[]).await;
        assert_eq!((s.as_u16(), answer.as_str()), (200, "stable 0"));
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_falls_behind_loses_its_copy_and_the_request_goes_on() {
    use tokio::io::AsyncReadExt;
    // A mirror that reads nothing for a while, then everything it gets.
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = received.clone();
    let sink_task = tokio::spawn(async move {
        let accepted = tokio::time::timeout(std::time::Duration::from_secs(10), sink.accept());
        let (mut s, _) = accepted.await.expect("the copy came").unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let mut buf = vec![0u8; 64 * 1024];
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < until {
            match tokio::time::timeout(std::time::Duration::from_secs(2), s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    counted.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
                _ => break,
            }
        }
    });
    let stable = Backend::start("stable").await;
    let p = start_proxy(&route_yaml(
        "mirror: { backend: sink }",
        &[
            ("stable", stable.url(), 100),
            ("sink", format!("http://{sink_addr}"), 0),
        ],
    ))
    .await;
    // More than the kernel's socket buffers on loopback hold.
    let size = 32 << 20;
    let (s, _, answer) = send(
        &client(),
        "POST",
        &format!("http://{}/", p.proxy_addr()),
        &[],
        vec![b'x'; size],
    )
    .await;
    assert_eq!((s.as_u16(), answer), (200, format!("stable {size}")));
    sink_task.await.unwrap();
    let got = received.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        got > 0 && got < size as u64,
        "the mirror got {got} bytes of a copy cut off at most 256 KiB behind its {size}-byte request"
    );
    // A copy cut off on sluice's side says nothing about the mirror: it is
    // not counted against it. (Given a moment, as the copy's task ends
    // just after its connection does.)
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let m = admin_text(&p, "/metrics").await;
    assert_eq!(metric(&m, REQUESTS, &[("backend", "sink")]), 0.0, "{m}");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_refuses_its_copies_is_counted_as_failing() {
    let stable = Backend::start("stable").await;
    let down = closed_port().await;
    let p = start_proxy(&route_yaml(
        "mirror: { backend: down }",
        &[
            ("stable", stable.url(), 100),
            ("down", format!("http://{down}"), 0),
        ],
    ))
    .await;
    let c = client();
    let url = format!("http://{}/", p.proxy_addr());
    // With bodies and without: a copy that never got to send its body was
    // refused by the mirror, not cut off by sluice.
    for body in ["", "some body"] {
        for _ in 0..3 {
            let (s, _, answer) = send(&c, "POST", &url, &[], body).await;
            assert_eq!(
                (s.as_u16(), answer),
                (200, format!("stable {}", body.len()))
            );
        }
    }
    let down_errors = [("backend", "down"), ("class", "error")];
    let within = std::time::Duration::from_secs(10);
    wait_metric(&p, REQUESTS, &down_errors, 6.0, within).await;
    p.shutdown().await;
}
