//! A real Prometheus server (Debian's package) on loopback, scraping the
//! targets a test gives it, found through a file it re-reads.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{client, closed_port, get};

pub struct Prometheus {
    child: Child,
    pub url: String,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus on `port` (a closed one if `None`), scraping every
    /// `scrape` the targets of [`Prometheus::set_targets`] as job `sluice`
    /// with the label `fleet="test"`.
    pub async fn start(port: Option<u16>, scrape: Duration, targets: &[String]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let ms = scrape.as_millis();
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: {ms}ms, evaluation_interval: 1s }}\nscrape_configs:\n  - job_name: sluice\n    scrape_interval: {ms}ms\n    scrape_timeout: {ms}ms\n    file_sd_configs: [{{ files: [\"{}\"], refresh_interval: 1s }}]\n",
                dir.path().join("targets.json").display()
            ),
        )
        .unwrap();
        let port = match port {
            Some(p) => p,
            None => closed_port().await.port(),
        };
        let p = Prometheus {
            child: Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("the prometheus binary (Debian package prometheus; scripts/test.sh installs it)"),
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        p.set_targets(targets);
        let c = client();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = http::Request::get(format!("{}/-/ready", p.url))
                .body(Default::default())
                .unwrap();
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), c.request(ready)).await
            {
                if r.status() == 200 {
                    return p;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "prometheus did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The `host:port` targets to scrape from now on.
    pub fn set_targets(&self, targets: &[String]) {
        let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let json = format!(
            "[{{ \"targets\": [{}], \"labels\": {{ \"fleet\": \"test\" }} }}]",
            list.join(", ")
        );
        let tmp = self.dir.path().join("targets.json.tmp");
        std::fs::write(&tmp, json).unwrap();
        std::fs::rename(tmp, self.dir.path().join("targets.json")).unwrap();
    }

    /// One instant query's single value; NaN when the result is empty.
    pub async fn query(&self, promql: &str) -> f64 {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = get(
            &client(),
            &format!("{}/api/v1/query?query={encoded}", self.url),
            &[],
        )
        .await;
        assert_eq!(status, 200, "{promql}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"][0]["value"][1]
            .as_str()
            .map_or(f64::NAN, |s| s.parse().unwrap())
    }
}
