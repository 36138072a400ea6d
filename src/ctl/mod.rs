//! `sluice ctl`: the admin API from a terminal, with readable output.
//!
//! Exit codes follow the contract: 0 done, 1 refused, 2 usage, 3 the admin
//! API could not be reached.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::admin::status::Status;
use crate::journal::Event;

mod format;
pub use format::format_status;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Routes, weights and the last minute's numbers per backend.
    Status,
    /// Set weights: `sluice ctl weights api stable=90 canary=10`.
    Weights {
        route: String,
        #[arg(required = true, value_name = "NAME=WEIGHT")]
        weights: Vec<String>,
    },
    /// Send all of a route's traffic to its baseline now.
    Rollback { route: String },
    /// Table versions: who changed what, when.
    History,
    /// Make an earlier table version current again.
    Restore { version: u64 },
    /// The journal, optionally for one route.
    Events {
        route: Option<String>,
        /// Only the last N events.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Print the running config (YAML).
    Config,
    /// Skip the rest of the current stage's bake.
    Promote { route: String },
    /// Hold the rollout at its stage (a critical gate still rolls back).
    Pause { route: String },
    /// Continue a paused rollout.
    Resume { route: String },
    /// Roll back by hand: all traffic to the baseline, the rollout stops.
    Abort { route: String },
    /// Start the rollout again from stage 1.
    Restart { route: String },
    /// The incident report of the route's latest rollback (markdown).
    Report { route: String },
    /// A live view of a route's rollout, redrawn every second.
    Watch {
        route: String,
        /// Print once and exit (for scripts).
        #[arg(long)]
        once: bool,
        #[arg(long, default_value = "1s", value_parser = crate::config::duration::parse)]
        every: Duration,
    },
    /// Validate a config file on the running proxy and swap to it.
    Apply { file: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the admin API at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{0}")]
    Refused(String),
}

impl CtlError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CtlError::Refused(_) => 1,
            CtlError::Usage(_) => 2,
            CtlError::Unreachable { .. } => 3,
        }
    }
}

pub struct Ctl {
    base: String,
    token: Option<String>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Ctl {
    pub fn new(admin: &str, token_file: Option<&std::path::Path>) -> Result<Self, CtlError> {
        let base = if admin.contains("://") {
            admin.to_string()
        } else {
            format!("http://{admin}")
        };
        let base = base.trim_end_matches('/').to_string();
        let token = match token_file {
            None => None,
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| {
                        CtlError::Usage(format!("cannot read token file {}: {e}", p.display()))
                    })?
                    .trim()
                    .to_string(),
            ),
        };
        Ok(Ctl {
            base,
            token,
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<Bytes, CtlError> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let (bytes, ctype) = body.unwrap_or_default();
        if !ctype.is_empty() {
            req = req.header("content-type", ctype);
        }
        let req = req
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| CtlError::Usage(format!("bad admin URL {url}: {e}")))?;
        let unreachable = |reason: String| CtlError::Unreachable {
            url: self.base.clone(),
            reason,
        };
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .map_err(|_| unreachable("no answer within 10s".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        if status.is_success() {
            return Ok(body);
        }
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                let mut m = v.get("error")?.as_str()?.to_string();
                if let Some(p) = v.get("problems").and_then(|p| p.as_array()) {
                    m = format!(
                        "{} ({} problem{})",
                        status_phrase(status),
                        p.len(),
                        if p.len() == 1 { "" } else { "s" }
                    );
                    for item in p {
                        let path = item.get("path").and_then(|x| x.as_str()).unwrap_or("");
                        let msg = item.get("message").and_then(|x| x.as_str()).unwrap_or("");
                        m.push_str(&format!(
                            "\n  {}{msg}",
                            if path.is_empty() {
                                String::new()
                            } else {
                                format!("{path}: ")
                            }
                        ));
                    }
                }
                Some(m)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        Err(CtlError::Refused(message))
    }

    /// Runs one subcommand and returns what to print.
    pub async fn run(&self, cmd: Command) -> Result<String, CtlError> {
        match cmd {
            Command::Status => {
                let body = self.call(Method::GET, "/status", None).await?;
                let s: Status = parse(&body)?;
                Ok(format_status(&s))
            }
            Command::Weights { route, weights } => {
                let mut map = BTreeMap::new();
                for w in &weights {
                    let (name, value) = w
                        .split_once('=')
                        .ok_or_else(|| CtlError::Usage(format!("\"{w}\" is not NAME=WEIGHT")))?;
                    let value: u64 = value.parse().map_err(|_| {
                        CtlError::Usage(format!("\"{value}\" in \"{w}\" is not a whole number"))
                    })?;
                    map.insert(name.to_string(), value);
                }
                let body = serde_json::to_vec(&map).expect("weights serialize");
                let reply = self
                    .call(
                        Method::PUT,
                        &format!("/routes/{route}/weights"),
                        Some((body, "application/json")),
                    )
                    .await?;
                let s: Status = parse(&reply)?;
                let version = s.config_version;
                Ok(format!(
                    "weights of {route} set (table version {version})\n{}",
                    format_status(&only(s, &route))
                ))
            }
            Command::Rollback { route } => {
                let reply = self
                    .call(Method::POST, &format!("/routes/{route}/rollback"), None)
                    .await?;
                let s: Status = parse(&reply)?;
                let version = s.config_version;
                Ok(format!(
                    "{route} rolled back (table version {version})\n{}",
                    format_status(&only(s, &route))
                ))
            }
            Command::History => {
                let body = self.call(Method::GET, "/history", None).await?;
                let list: Vec<serde_json::Value> = parse(&body)?;
                let mut out = String::from(
                    "VERSION  TIME                      ACTOR                 REASON\n",
                );
                for v in list {
                    let current = v["current"].as_bool() == Some(true);
                    out.push_str(&format!(
                        "{:<8} {:<25} {:<21} {}{}\n",
                        v["version"],
                        v["time"].as_str().unwrap_or(""),
                        v["actor"].as_str().unwrap_or(""),
                        v["reason"].as_str().unwrap_or(""),
                        if current { "  (current)" } else { "" }
                    ));
                }
                Ok(out)
            }
            Command::Restore { version } => {
                let reply = self
                    .call(Method::POST, &format!("/history/{version}/restore"), None)
                    .await?;
                let s: Status = parse(&reply)?;
                Ok(format!(
                    "version {version} restored as table version {}\n{}",
                    s.config_version,
                    format_status(&s)
                ))
            }
            Command::Events { route, limit } => {
                let mut path = format!("/events?limit={limit}");
                if let Some(r) = &route {
                    path.push_str(&format!("&route={r}"));
                }
                let body = self.call(Method::GET, &path, None).await?;
                let events: Vec<Event> = parse(&body)?;
                let mut out = String::new();
                for e in events {
                    let route = e.route.map(|r| format!("[{r}] ")).unwrap_or_default();
                    out.push_str(&format!(
                        "{} #{} {route}{}: {} ({})\n",
                        e.time, e.seq, e.kind, e.message, e.actor
                    ));
                }
                if out.is_empty() {
                    out.push_str("no events\n");
                }
                Ok(out)
            }
            Command::Config => {
                let body = self.call(Method::GET, "/config?format=yaml", None).await?;
                Ok(String::from_utf8_lossy(&body).into_owned())
            }
            Command::Promote { route } => self.action(&route, "promote").await,
            Command::Pause { route } => self.action(&route, "pause").await,
            Command::Resume { route } => self.action(&route, "resume").await,
            Command::Abort { route } => self.action(&route, "abort").await,
            Command::Restart { route } => self.action(&route, "restart").await,
            Command::Report { route } => {
                let body = self
                    .call(Method::GET, &format!("/routes/{route}/report"), None)
                    .await?;
                Ok(String::from_utf8_lossy(&body).into_owned())
            }
            Command::Watch { route, once, every } => {
                loop {
                    let frame = self.watch_frame(&route).await?;
                    if once {
                        return Ok(frame);
                    }
                    // Clear the screen and draw the frame at the top.
                    print!("\x1b[2J\x1b[H{frame}");
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                    tokio::time::sleep(every).await;
                }
            }
            Command::Apply { file } => {
                let text = std::fs::read(&file)
                    .map_err(|e| CtlError::Usage(format!("cannot read {}: {e}", file.display())))?;
                let ctype = if file.extension().is_some_and(|e| e == "json") {
                    "application/json"
                } else {
                    "application/yaml"
                };
                let reply = self
                    .call(Method::PUT, "/config", Some((text, ctype)))
                    .await?;
                let s: Status = parse(&reply)?;
                Ok(format!(
                    "{} applied as table version {}\n",
                    file.display(),
                    s.config_version
                ))
            }
        }
    }
}

impl Ctl {
    async fn action(&self, route: &str, action: &str) -> Result<String, CtlError> {
        let reply = self
            .call(
                Method::POST,
                &format!("/routes/{route}/rollout/{action}"),
                None,
            )
            .await?;
        let s: Status = parse(&reply)?;
        let note = s.note.clone().map_or(String::new(), |n| format!(" ({n})"));
        Ok(format!(
            "{route}: {action} done{note}\n{}",
            format_status(&only(s, route))
        ))
    }

    async fn watch_frame(&self, route: &str) -> Result<String, CtlError> {
        let s: Status = parse(&self.call(Method::GET, "/status", None).await?)?;
        let s = only(s, route);
        if s.routes.is_empty() {
            return Err(CtlError::Refused(format!("no route named \"{route}\"")));
        }
        let events: Vec<Event> = parse(
            &self
                .call(Method::GET, &format!("/events?route={route}&limit=8"), None)
                .await?,
        )?;
        let mut out = format_status(&s);
        out.push_str("\nrecent events\n");
        for e in events.iter().rev() {
            out.push_str(&format!(
                "  {} {}: {}\n",
                e.time.get(11..23).unwrap_or(&e.time),
                e.kind,
                e.message
            ));
        }
        Ok(out)
    }
}

fn status_phrase(s: StatusCode) -> &'static str {
    match s {
        StatusCode::UNPROCESSABLE_ENTITY => "rejected; the running table is unchanged",
        StatusCode::UNAUTHORIZED => "unauthorized",
        _ => "refused",
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, CtlError> {
    serde_json::from_slice(body)
        .map_err(|e| CtlError::Refused(format!("unexpected answer from the admin API: {e}")))
}

fn only(mut s: Status, route: &str) -> Status {
    s.routes.retain(|r| r.name == route);
    s
}
