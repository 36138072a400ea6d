use std::path::Path;

use super::*;

fn check(yaml: &str) -> Result<Config, Problems> {
    validate(parse_document(yaml, Syntax::Yaml)?, Path::new("."))
}

const ROUTE: &str =
    "routes:\n  - { name: api, backends: [{ name: a, url: \"http://127.0.0.1:9001\" }] }\n";

#[test]
fn defaults_apply() {
    let c = check(&format!(
        "listeners: [{{ addr: \"127.0.0.1:8080\" }}]\n{ROUTE}"
    ))
    .unwrap();
    assert_eq!(c.admin.addr.to_string(), "127.0.0.1:9901");
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.forwarded, Forwarded::Append);
    let r = &c.routes[0];
    assert_eq!(
        (r.baseline, r.timeout.as_secs(), r.backends[0].weight),
        (0, 30, 1)
    );
    assert_eq!(r.backends[0].target.authority.as_str(), "127.0.0.1:9001");
}

#[test]
fn a_reachable_admin_needs_a_token() {
    let err = check(&format!(
        "listeners: [{{ addr: \"0.0.0.0:8080\" }}]\nadmin: {{ addr: \"0.0.0.0:9901\" }}\n{ROUTE}"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("admin.addr: 0.0.0.0:9901 is reachable from other hosts"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t"), "x\n").unwrap();
    let doc = parse_document(
        &format!("listeners: [{{ addr: \"0.0.0.0:8080\" }}]\nadmin: {{ addr: \"[::]:9901\", token_file: t }}\n{ROUTE}"),
        Syntax::Yaml,
    )
    .unwrap();
    let c = validate(doc, dir.path()).unwrap();
    assert_eq!(c.admin.token.as_deref(), Some("x"));
}

#[test]
fn hosts_weights_and_limits_are_checked() {
    let yaml = "listeners: [{ addr: \"127.0.0.1:1\" }, { addr: \"127.0.0.1:1\" }]\nforwarded: sometimes\nlimits: { idle_timeout: 0s, max_header_bytes: 100, connect_timeout: soon }\nroutes:\n  - name: api\n    match: { host: \"*.\", path_prefix: v1 }\n    backends: [{ name: a, url: \"http://127.0.0.1:1\", weight: 2000000, protocol: h3 }]\n";
    let problems: Vec<String> = check(yaml)
        .unwrap_err()
        .0
        .iter()
        .map(|p| p.path.clone())
        .collect();
    assert_eq!(
        problems,
        [
            "listeners[1].addr",
            "limits.idle_timeout",
            "limits.connect_timeout",
            "limits.max_header_bytes",
            "forwarded",
            "routes[0].match.host",
            "routes[0].match.path_prefix",
            "routes[0].backends[0].weight",
            "routes[0].backends[0].protocol",
        ]
    );
}

#[test]
fn json_and_yaml_read_alike() {
    let json = r#"{"listeners":[{"addr":"127.0.0.1:8080"}],"routes":[{"name":"api","sticky":{"cookie":"y"},"backends":[{"name":"a","url":"http://127.0.0.1:9001"}]}]}"#;
    let a = parse_document(json, Syntax::Json).unwrap();
    let b = parse_document(json, Syntax::Yaml).unwrap();
    assert_eq!(a, b);
    assert_eq!(
        a.routes[0].sticky.as_ref().unwrap().cookie.as_deref(),
        Some("y")
    );
}

#[test]
fn wildcard_hosts_are_suffixes() {
    let yaml = ROUTE.replace(
        "name: api,",
        "name: api, match: { host: \"*.Example.com\" },",
    );
    let c = check(&format!(
        "listeners: [{{ addr: \"127.0.0.1:8080\" }}]\n{yaml}"
    ))
    .unwrap();
    assert_eq!(
        c.routes[0].host,
        Some(HostMatch::Suffix(".example.com".into()))
    );
}

#[test]
fn a_mirror_names_a_backend_of_its_route_and_a_share() {
    let route = |mirror: &str| {
        format!(
            "listeners: [{{ addr: \"127.0.0.1:8080\" }}]\nroutes:\n  - name: api\n    backends: [{{ name: a, url: \"http://127.0.0.1:9001\" }}, {{ name: b, url: \"http://127.0.0.1:9002\", weight: 0 }}]\n    mirror: {mirror}\n"
        )
    };
    let c = check(&route("{ backend: b }")).unwrap();
    assert_eq!(
        c.routes[0].mirror,
        Some(Mirror {
            backend: 1,
            per_10000: 10_000
        })
    );
    let c = check(&route("{ backend: b, percent: 12.5 }")).unwrap();
    assert_eq!(c.routes[0].mirror.map(|m| m.per_10000), Some(1_250));
    let err = check(&route("{ backend: c, percent: 150 }"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("routes[0].mirror.percent: must be from 0 to 100, not 150"),
        "{err}"
    );
    assert!(
        err.contains("routes[0].mirror.backend: no backend named \"c\" (backends: a, b)"),
        "{err}"
    );
    let err = check(&route("{ backend: b, percent: .nan }"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("non-finite float `.nan` rejected"), "{err}");
}

const FLEET_ROUTE: &str = "listeners: [{ addr: \"127.0.0.1:0\" }]\nroutes:\n  - name: api\n    backends: [{ name: stable, url: \"http://127.0.0.1:1\" }, { name: canary, url: \"http://127.0.0.1:2\", weight: 0 }]\n    rollout: { baseline: stable, canary: canary, gates: { success_rate: { critical: 99 } } }\n";

#[test]
fn the_digest_is_the_document_less_what_belongs_to_one_process() {
    let a = check(&format!(
        "admin: {{ addr: \"127.0.0.1:9901\" }}\n{}",
        FLEET_ROUTE.replace("127.0.0.1:0", "127.0.0.1:8080")
    ))
    .unwrap();
    // Other ports, another admin and state dir: the same fleet config.
    let b = check(&format!(
        "admin: {{ addr: \"127.0.0.1:0\" }}\nstate_dir: elsewhere\n{FLEET_ROUTE}"
    ))
    .unwrap();
    assert_eq!(a.digest, b.digest);
    // The rollout drives the route's weights: a replica a tick ahead
    // serves the same config.
    let mut doc = (*a.document).clone();
    std::sync::Arc::make_mut(doc.routes.get_mut(0).unwrap()).backends[1].weight = 10;
    assert_eq!(super::digest(&doc), *a.digest);
    // Anything else is another config: a pause, a timeout.
    let paused =
        check(&FLEET_ROUTE.replace("canary: canary,", "canary: canary, paused: true,")).unwrap();
    assert_ne!(paused.digest, a.digest);
    // ... and a pause is the same rollout, a generation a new one.
    assert_eq!(paused.fingerprints, a.fingerprints);
    let next =
        check(&FLEET_ROUTE.replace("canary: canary,", "canary: canary, generation: 2,")).unwrap();
    assert_ne!(next.fingerprints["api"], a.fingerprints["api"]);
    let moved = check(&FLEET_ROUTE.replace("127.0.0.1:2", "127.0.0.1:3")).unwrap();
    assert_ne!(moved.fingerprints["api"], a.fingerprints["api"]);
}

#[test]
fn the_fleet_section_is_checked() {
    let ok = check(&format!(
        "fleet: {{ prometheus: \"http://127.0.0.1:9090/\", selector: '{{job=\"sluice\", fleet=\"a\"}}' }}\n{FLEET_ROUTE}"
    ))
    .unwrap();
    let f = ok.fleet.unwrap();
    assert_eq!(f.prometheus, "http://127.0.0.1:9090");
    assert_eq!(f.lag, std::time::Duration::from_secs(10));
    assert_eq!(
        f.select("sluice_config_info", "route=\"api\""),
        "sluice_config_info{job=\"sluice\", fleet=\"a\",route=\"api\"}"
    );
    let bad = check(&format!(
        "fleet: {{ prometheus: \"ftp://x\", selector: 'job=sluice', lag: soon, replicas: 0 }}\n{}",
        FLEET_ROUTE.replace("canary: canary,", "canary: canary, action: later,")
    ))
    .unwrap_err()
    .to_string();
    for want in [
        "fleet.prometheus: \"ftp://x\" is not an http:// URL",
        "fleet.selector: \"job=sluice\" is not label matchers in braces",
        "fleet.lag:",
        "fleet.replicas: must be at least 1",
        "routes[0].rollout.action: \"later\" is not one of promote, abort, restart",
    ] {
        assert!(bad.contains(want), "{want} missing from:\n{bad}");
    }
}
