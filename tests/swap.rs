//! Swapping the routing table while traffic flows: weights, rollback,
//! restore, whole configs from the API and from the file, and refusals
//! that leave the running table alone.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_during_many_swaps_under_load() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let p = start_proxy(&route_yaml(
        "",
        &[("stable", stable.url(), 90), ("canary", canary.url(), 10)],
    ))
    .await;
    let url = format!("http://{}/", p.proxy_addr());
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..16)
        .map(|_| {
            let (url, stop, ok, failed) = (url.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let c = client();
                // Bounded: stops when told, or after 20 000 requests.
                for _ in 0..20_000 {
                    if stop.load(Relaxed) {
                        break;
                    }
                    let (s, _) = get(&c, &url, &[]).await;
                    if s == 200 { &ok } else { &failed }.fetch_add(1, Relaxed);
                }
            })
        })
        .collect();
    let admin = client();
    let weights_url = format!("http://{}/routes/api/weights", p.admin_addr);
    for i in 0..120u32 {
        let body = format!(
            r#"{{"stable": {}, "canary": {}}}"#,
            100 - i % 100,
            i % 100 + 1
        );
        let (s, _, b) = send(&admin, "PUT", &weights_url, &[], body).await;
        assert_eq!(s, 200, "{b}");
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    stop.store(true, Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(version(&p), 121);
    assert_eq!(failed.load(Relaxed), 0, "requests failed during swaps");
    assert!(
        ok.load(Relaxed) > 500,
        "the load must overlap the swaps; only {} requests",
        ok.load(Relaxed)
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_rollback_returns_no_new_request_reaches_the_canary() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    // The canary also gets a copy of every request that goes to stable:
    // after the rollback, not even a copy may reach it.
    let yaml = route_yaml(
        "mirror: { backend: canary }",
        &[("stable", stable.url(), 50), ("canary", canary.url(), 50)],
    );
    let p = start_proxy(&yaml).await;
    let url = format!("http://{}/", p.proxy_addr());
    let rolled_back = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (url, rolled_back) = (url.clone(), rolled_back.clone());
            tokio::spawn(async move {
                let c = client(); // keep-alive connections to both backends stay pooled
                for i in 0..3_000 {
                    // Requests started after the rollback returned carry a mark.
                    let after = rolled_back.load(Relaxed);
                    let headers: &[(&str, &str)] =
                        if after { &[("x-mark-after", "1")] } else { &[] };
                    assert_eq!(get(&c, &url, headers).await.0, 200);
                    if after && i > 200 {
                        break;
                    }
                }
            })
        })
        .collect();
    eventually(Duration::from_secs(10), "canary traffic", || {
        canary.state.seen() > 200
    })
    .await;
    let (s, _, body) = send(
        &client(),
        "POST",
        &format!("http://{}/routes/api/rollback", p.admin_addr),
        &[],
        "",
    )
    .await;
    assert_eq!(s, 200, "{body}");
    rolled_back.store(true, Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert!(stable.state.marked("x-mark-after") > 100);
    assert_eq!(
        canary.state.marked("x-mark-after"),
        0,
        "a request sent after the rollback reached the canary"
    );
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let weights: Vec<u64> = status["routes"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["weight"].as_u64().unwrap())
        .collect();
    assert_eq!(weights, vec![100, 0]);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_goes_to_the_rollout_baseline() {
    let a = Backend::start("canary").await;
    let b = Backend::start("stable").await;
    let p = start_proxy(&route_yaml(
        "rollout: { baseline: stable, canary: canary, interval: 1h, gates: { success_rate: { critical: 90 } } }",
        &[("canary", a.url(), 50), ("stable", b.url(), 50)],
    ))
    .await;
    let (s, _, _) = send(
        &client(),
        "POST",
        &format!("http://{}/routes/api/rollback", p.admin_addr),
        &[],
        "",
    )
    .await;
    assert_eq!(s, 200);
    for _ in 0..50 {
        assert_eq!(
            who(&get(&client(), &format!("http://{}/", p.proxy_addr()), &[])
                .await
                .1),
            "stable"
        );
    }
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_changes_are_refused_and_the_old_table_keeps_serving() {
    let stable = Backend::start("stable").await;
    let p = start_proxy(&route_yaml("", &[("stable", stable.url(), 1)])).await;
    let c = client();
    let admin = format!("http://{}", p.admin_addr);
    let cases: &[(&str, &str, &str, &str)] = &[
        ("PUT", "/config", "routes: [", "invalid YAML"),
        ("PUT", "/config", "routes:\n  - name: api\n    backends: [{ name: a, url: \"http://127.0.0.1:1\", wieght: 3 }]\n", "wieght"),
        (
            "PUT",
            "/config",
            "routes:\n  - name: API\n    backends: [{ name: a, url: \"ftp://x\" }, { name: a, url: \"http://127.0.0.1:1\", weight: 0 }]\n",
            "routes[0].backends[1].name",
        ),
        ("PUT", "/config", "listeners: [{ addr: \"127.0.0.1:1\" }]\nroutes:\n  - { name: api, backends: [{ name: a, url: \"http://127.0.0.1:1\" }] }\n", "listeners"),
        ("PUT", "/routes/api/weights", r#"{"stable": 0}"#, "add up to zero"),
        ("PUT", "/routes/api/weights", r#"{"canary": 5}"#, "no backend named"),
        ("PUT", "/routes/api/weights", r#"{"stable": "x"}"#, "JSON object"),
    ];
    for (method, path, body, expect) in cases {
        let (s, _, answer) =
            send(&c, method, &format!("{admin}{path}"), &[], body.to_string()).await;
        assert_eq!(s, 422, "{path} {body}: {answer}");
        assert!(
            answer.contains(expect),
            "{body}: expected the answer to name {expect:?}: {answer}"
        );
    }
    let (s, _, _) = send(
        &c,
        "POST",
        &format!("{admin}/routes/nope/rollback"),
        &[],
        "",
    )
    .await;
    assert_eq!(s, 404);
    let (s, _, _) = send(&c, "POST", &format!("{admin}/history/99/restore"), &[], "").await;
    assert_eq!(s, 404);
    let (s, _, _) = send(
        &c,
        "PUT",
        &format!("{admin}/config"),
        &[],
        vec![b' '; 2 * 1024 * 1024],
    )
    .await;
    assert_eq!(s, 413);

    assert_eq!(version(&p), 1, "nothing changed");
    assert_eq!(
        who(&get(&c, &format!("http://{}/", p.proxy_addr()), &[]).await.1),
        "stable"
    );
    let m = get(&c, &format!("{admin}/metrics"), &[]).await.1;
    assert_eq!(
        metric(&m, "sluice_config_reloads_total", &[("result", "rejected")]),
        9.0
    );
    let events = get(&c, &format!("{admin}/events"), &[]).await.1;
    assert_eq!(
        events.matches("change_rejected").count(),
        9,
        "every refusal is journaled"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_config_history_and_restore() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let p = start_proxy(&route_yaml("", &[("a", a.url(), 1)])).await;
    let c = client();
    let admin = format!("http://{}", p.admin_addr);
    let proxy = format!("http://{}/", p.proxy_addr());
    assert_eq!(who(&get(&c, &proxy, &[]).await.1), "a");
    // A new document without listeners/admin keeps the running ones.
    let json = format!(
        r#"{{"routes": [{{"name": "api", "backends": [{{"name": "b", "url": "{}"}}]}}]}}"#,
        b.url()
    );
    let (s, _, body) = send(
        &c,
        "PUT",
        &format!("{admin}/config"),
        &[("content-type", "application/json")],
        json,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(who(&get(&c, &proxy, &[]).await.1), "b");
    let history: serde_json::Value =
        serde_json::from_str(&get(&c, &format!("{admin}/history"), &[]).await.1).unwrap();
    let list = history.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["version"], 1);
    assert_eq!(list[1]["current"], true);
    assert!(list[1]["actor"].as_str().unwrap().starts_with("admin"));
    let (s, _, body) = send(&c, "POST", &format!("{admin}/history/1/restore"), &[], "").await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(version(&p), 3);
    assert_eq!(who(&get(&c, &proxy, &[]).await.1), "a");
    let yaml = get(&c, &format!("{admin}/config?format=yaml"), &[]).await.1;
    assert!(yaml.contains(&a.url()), "{yaml}");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_need_the_token_when_one_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "s3cret\n").unwrap();
    let a = Backend::start("a").await;
    let yaml = route_yaml("", &[("a", a.url(), 1), ("b", a.url(), 1)]).replace(
        "admin:\n  addr: 127.0.0.1:0",
        "admin:\n  addr: 127.0.0.1:0\n  token_file: token",
    );
    let p = start_proxy_in(&yaml, dir.path()).await;
    let c = client();
    let admin = format!("http://{}", p.admin_addr);
    for auth in [None, Some("Bearer wrong"), Some("s3cret")] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
        let (s, _, _) = send(
            &c,
            "POST",
            &format!("{admin}/routes/api/rollback"),
            &headers,
            "",
        )
        .await;
        assert_eq!(s, 401, "{auth:?}");
        let (s, _, _) = send(
            &c,
            "PUT",
            &format!("{admin}/routes/api/weights"),
            &headers,
            r#"{"a": 5}"#,
        )
        .await;
        assert_eq!(s, 401, "{auth:?}");
    }
    assert_eq!(version(&p), 1, "refused calls change nothing");
    assert_eq!(
        get(&c, &format!("{admin}/status"), &[]).await.0,
        200,
        "reads need no token"
    );
    let (s, _, _) = send(
        &c,
        "POST",
        &format!("{admin}/routes/api/rollback"),
        &[("authorization", "Bearer s3cret")],
        "",
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(version(&p), 2);
    p.shutdown().await;
}

/// Lays out a config the way a Kubernetes ConfigMap volume does:
/// `sluice.yaml -> ..data/sluice.yaml`, `..data -> ..<version>/`.
fn configmap_version(dir: &std::path::Path, name: &str, yaml: &str) {
    let v = dir.join(name);
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(v.join("sluice.yaml"), yaml).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(name, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if !dir.join("sluice.yaml").exists() {
        std::os::unix::fs::symlink("..data/sluice.yaml", dir.join("sluice.yaml")).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_file_is_watched_through_a_symlink_swap() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let v1 = route_yaml("", &[("a", a.url(), 1)]);
    configmap_version(dir.path(), "..v1", &v1);
    let p = start_proxy_file(&dir.path().join("sluice.yaml")).await;
    let c = client();
    let proxy = format!("http://{}/", p.proxy_addr());
    assert_eq!(who(&get(&c, &proxy, &[]).await.1), "a");

    configmap_version(dir.path(), "..v2", &route_yaml("", &[("b", b.url(), 1)]));
    eventually(
        Duration::from_secs(5),
        "reload after the symlink swap",
        || version(&p) == 2,
    )
    .await;
    assert_eq!(who(&get(&c, &proxy, &[]).await.1), "b");

    // A broken file is refused; b keeps serving.
    configmap_version(dir.path(), "..v3", "routes: [ {name: api, backends: [] } ]");
    let m_url = format!("http://{}/metrics", p.admin_addr);
    let mut rejected = 0.0;
    for _ in 0..100 {
        rejected = metric(
            &get(&c, &m_url, &[]).await.1,
            "sluice_config_reloads_total",
            &[("result", "rejected")],
        );
        if rejected >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(rejected, 1.0);
    assert_eq!(version(&p), 2);
    assert_eq!(who(&get(&c, &proxy, &[]).await.1), "b");

    // A deleted file changes nothing either.
    std::fs::remove_file(dir.path().join("..data")).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(version(&p), 2);
    assert_eq!(who(&get(&c, &proxy, &[]).await.1), "b");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_journal_survive_a_restart() {
    let a = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "state_dir: state\n{}",
        route_yaml("", &[("a", a.url(), 1), ("b", a.url(), 1)])
    );
    let p = start_proxy_in(&yaml, dir.path()).await;
    let c = client();
    let (s, _, _) = send(
        &c,
        "PUT",
        &format!("http://{}/routes/api/weights", p.admin_addr),
        &[],
        r#"{"b": 0}"#,
    )
    .await;
    assert_eq!(s, 200);
    p.shutdown().await;

    let p = start_proxy_in(&yaml, dir.path()).await;
    assert_eq!(version(&p), 3, "versions continue after a restart");
    let admin = format!("http://{}", p.admin_addr);
    let history: serde_json::Value =
        serde_json::from_str(&get(&c, &format!("{admin}/history"), &[]).await.1).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 3);
    let events: serde_json::Value =
        serde_json::from_str(&get(&c, &format!("{admin}/events?route=api"), &[]).await.1).unwrap();
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["weights"]);
    // Version 2 (weights b=0) can be restored after the restart.
    let (s, _, body) = send(&c, "POST", &format!("{admin}/history/2/restore"), &[], "").await;
    assert_eq!(s, 200, "{body}");
    let journal = std::fs::read_to_string(dir.path().join("state/journal.jsonl")).unwrap();
    assert_eq!(journal.lines().count(), 4, "{journal}");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_change_answers_with_that_route_alone() {
    let b = Backend::start("b").await;
    let mut yaml =
        "listeners: [{ addr: 127.0.0.1:0 }]\nadmin: { addr: 127.0.0.1:0 }\nroutes:\n".to_string();
    for name in ["one", "two", "three"] {
        yaml.push_str(&format!(
            "  - {{ name: {name}, match: {{ host: {name}.test }}, backends: [{{ name: stable, url: \"{}\" }}, {{ name: canary, url: \"{}\", weight: 0 }}] }}\n",
            b.url(),
            b.url()
        ));
    }
    let p = start_proxy(&yaml).await;
    let (s, _, body) = send(
        &client(),
        "PUT",
        &format!("http://{}/routes/two/weights", p.admin_addr),
        &[],
        r#"{"stable": 70, "canary": 30}"#,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let routes = answer["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 1, "{answer:#}");
    assert_eq!(routes[0]["name"], "two");
    assert_eq!(routes[0]["backends"][1]["weight"], 30);
    let all = admin_json(&p, "/status").await;
    assert_eq!(all["routes"].as_array().unwrap().len(), 3);
    assert_eq!(
        all["routes"][0]["backends"][1]["weight"], 0,
        "route one untouched"
    );
    p.shutdown().await;
}
