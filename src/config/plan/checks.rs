//! A plan's smoke checks and deployment windows.

use super::*;

pub(super) fn smoke(list: &[raw::Smoke], c: &mut Ctx) -> Vec<SmokeCheck> {
    let mut out = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let base = format!("smoke[{i}]");
        let method = match s.method.as_deref().unwrap_or("GET").parse::<http::Method>() {
            Ok(m) => m,
            Err(_) => {
                c.problem(&format!("{base}.method"), "is not an HTTP method");
                continue;
            }
        };
        let path = match s.path.parse::<http::uri::PathAndQuery>() {
            Ok(p) if s.path.starts_with('/') => p,
            _ => {
                c.problem(
                    &format!("{base}.path"),
                    format!("\"{}\" must be a path starting with /", s.path),
                );
                continue;
            }
        };
        let mut headers = Vec::new();
        for (k, v) in &s.headers {
            match (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                (Ok(k), Ok(v)) => headers.push((k, v)),
                _ => c.problem(&format!("{base}.headers.{k}"), "is not a valid header"),
            }
        }
        let expect_status = s.expect_status.unwrap_or(200);
        if !(100..=599).contains(&expect_status) {
            c.problem(
                &format!("{base}.expect_status"),
                format!("{expect_status} is not an HTTP status"),
            );
        }
        let expect_latency_below = c.duration(
            &format!("{base}.expect_latency_below"),
            s.expect_latency_below.as_deref(),
            Duration::from_secs(5),
        );
        out.push(SmokeCheck {
            name: s.name.clone(),
            method,
            path,
            headers,
            body: s.body.clone().unwrap_or_default(),
            expect_status,
            expect_body_contains: s.expect_body_contains.clone(),
            expect_latency_below,
        });
    }
    out
}

pub(super) fn deploy_window(
    w: &raw::DeployWindow,
    base: &str,
    c: &mut Ctx,
) -> Option<DeployWindow> {
    let mut days = Vec::new();
    for d in &w.days {
        let n = match d.to_ascii_lowercase().as_str() {
            "mon" | "monday" => 1,
            "tue" | "tuesday" => 2,
            "wed" | "wednesday" => 3,
            "thu" | "thursday" => 4,
            "fri" | "friday" => 5,
            "sat" | "saturday" => 6,
            "sun" | "sunday" => 7,
            _ => {
                c.problem(
                    &format!("{base}.days"),
                    format!("\"{d}\" is not a day (mon, tue, ... sun)"),
                );
                continue;
            }
        };
        days.push(n);
    }
    if w.days.is_empty() {
        c.problem(
            &format!("{base}.days"),
            "list at least one day, or the window never opens",
        );
    }
    let minutes = |c: &mut Ctx, which: &str, t: &str| -> Option<u16> {
        let parsed = t
            .split_once(':')
            .and_then(|(h, m)| Some((h.parse::<u16>().ok()?, m.parse::<u16>().ok()?)))
            .filter(|(h, m)| *h < 24 && *m < 60 || (*h == 24 && *m == 0));
        match parsed {
            Some((h, m)) => Some(h * 60 + m),
            None => {
                c.problem(
                    &format!("{base}.{which}"),
                    format!("\"{t}\" is not a time of day as HH:MM"),
                );
                None
            }
        }
    };
    let from = minutes(c, "from", &w.from);
    let to = minutes(c, "to", &w.to);
    let tz_name = w.tz.as_deref().unwrap_or("UTC");
    let tz = match jiff::tz::TimeZone::get(tz_name) {
        Ok(tz) => Some(tz),
        Err(e) => {
            c.problem(
                &format!("{base}.tz"),
                format!("\"{tz_name}\" is not a known time zone: {e}"),
            );
            None
        }
    };
    let (from, to, tz) = (from?, to?, tz?);
    if from == to {
        c.problem(
            base,
            format!(
                "from {} and to {} are the same: the window never opens",
                w.from, w.to
            ),
        );
        return None;
    }
    Some(DeployWindow { days, from, to, tz })
}
