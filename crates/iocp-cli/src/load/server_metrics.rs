//! `iocp bench … --metrics URL`: scrape the server's `/metrics` (an `iocp serve … --metrics`
//! endpoint) before and after the run, and print what the server and its port saw.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::table::{Align, render};

/// The samples of one scrape: `name{labels}` → value.
#[derive(Clone, Debug, Default)]
pub(crate) struct Samples(BTreeMap<String, f64>);

impl Samples {
    /// Reads the Prometheus text exposition format (version 0.0.4): every sample line, comments
    /// skipped. Lines that are not `name[{labels}] value [timestamp]` are an error.
    pub(crate) fn parse(text: &str) -> anyhow::Result<Samples> {
        let mut out = BTreeMap::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            // Label values may hold spaces: the value follows the closing brace, if any.
            let split = line.rfind('}').map_or(0, |i| i + 1);
            let (name, rest) =
                line.split_at(line[split..].find(' ').map_or(line.len(), |i| split + i));
            let value = rest.split_whitespace().next().context("a sample without a value")?;
            let v: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().with_context(|| format!("bad sample value in {line:?}"))?,
            };
            out.insert(name.to_owned(), v);
        }
        Ok(Samples(out))
    }

    fn get(&self, name: &str) -> Option<f64> {
        self.0.get(name).copied()
    }

    fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.0.iter().filter(move |(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.as_str(), *v))
    }
}

/// The `/metrics` URL for what the user gave (a base URL gets `/metrics`).
fn metrics_url(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    if rest.contains('/') && !rest.ends_with('/') {
        format!("http://{rest}")
    } else {
        format!("http://{}/metrics", rest.trim_end_matches('/'))
    }
}

fn fetch(url: &str) -> anyhow::Result<Samples> {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .new_agent();
    let text = agent
        .get(url)
        .call()
        .and_then(|mut r| r.body_mut().read_to_string())
        .with_context(|| format!("fetching {url}"))?;
    Samples::parse(&text).with_context(|| format!("parsing {url}"))
}

/// A scrape taken before the run, to subtract at the end.
#[derive(Debug)]
pub(crate) struct Scrape {
    url: String,
    before: Samples,
    at: Instant,
}

impl Scrape {
    /// Scrapes `url` (if given) before the run.
    ///
    /// # Errors
    /// The endpoint cannot be fetched or does not parse.
    pub(crate) fn start(url: Option<&str>) -> anyhow::Result<Option<Scrape>> {
        let Some(url) = url else { return Ok(None) };
        let url = metrics_url(url);
        let before = fetch(&url)?;
        Ok(Some(Scrape { url, before, at: Instant::now() }))
    }

    /// Scrapes again and renders what the server saw during the run: a table, or (with
    /// `json`) one JSON object line.
    pub(crate) fn finish(self, json: bool) -> anyhow::Result<String> {
        let after = fetch(&self.url)?;
        let secs = self.at.elapsed().as_secs_f64().max(1e-9);
        Ok(report(&self.url, &self.before, &after, secs, json))
    }
}

fn quantile(before: &Samples, after: &Samples, q: f64) -> Option<f64> {
    const B: &str = "iocp_server_service_seconds_bucket{le=\"";
    let mut buckets: Vec<(f64, f64)> = after
        .with_prefix(B)
        .filter_map(|(k, v)| {
            let le = k[B.len()..].trim_end_matches("\"}");
            let le: f64 = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, v - before.get(k).unwrap_or(0.0)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets.iter().find(|(_, cum)| *cum >= q * total).map(|(le, _)| *le)
}

fn report(url: &str, before: &Samples, after: &Samples, secs: f64, json: bool) -> String {
    let now = |n: &str| after.get(n).unwrap_or(0.0);
    let delta = |n: &str| now(n) - before.get(n).unwrap_or(0.0);
    let sum_delta = |p: &str| -> f64 {
        after.with_prefix(p).map(|(k, v)| v - before.get(k).unwrap_or(0.0)).sum()
    };
    let workers: Vec<String> = after
        .with_prefix("iocp_pool_worker_packets_total{")
        .map(|(k, v)| format!("{}", v - before.get(k).unwrap_or(0.0)))
        .collect();
    let us =
        |q| quantile(before, after, q).map_or("-".to_owned(), |s| format!("≤ {:.0} µs", s * 1e6));
    let msgs = delta("iocp_server_messages_total");
    let rows: Vec<(&str, String)> = vec![
        ("messages", format!("{msgs} ({:.0}/s)", msgs / secs)),
        (
            "bytes in / out",
            format!(
                "{} / {}",
                delta("iocp_server_received_bytes_total"),
                delta("iocp_server_sent_bytes_total")
            ),
        ),
        (
            "connections accepted / refused / active",
            format!(
                "{} / {} / {}",
                delta("iocp_server_connections_accepted_total"),
                delta("iocp_server_connections_refused_total"),
                now("iocp_server_connections_active")
            ),
        ),
        (
            "errors / timeouts",
            format!(
                "{} / {}",
                sum_delta("iocp_server_errors_total{"),
                sum_delta("iocp_server_timeouts_total{")
            ),
        ),
        ("service time p50 / p99", format!("{} / {}", us(0.5), us(0.99))),
        (
            "port packets dequeued",
            format!(
                "{} ({:.0}/s)",
                delta("iocp_port_dequeued_total"),
                delta("iocp_port_dequeued_total") / secs
            ),
        ),
        (
            "port queued / waiters / in flight / backlog",
            format!(
                "{} / {} / {} / {}",
                now("iocp_port_queued"),
                now("iocp_port_waiters"),
                now("iocp_port_in_flight"),
                now("iocp_port_backlog")
            ),
        ),
        (
            "port running / concurrency",
            format!("{} / {}", now("iocp_port_running"), now("iocp_port_concurrency")),
        ),
        (
            "port sq full / cq overflow",
            format!(
                "{} / {}",
                delta("iocp_port_sq_full_total"),
                now("iocp_port_cq_overflow_total")
            ),
        ),
        ("packets per worker", workers.join(" ")),
    ];
    if json {
        let mut o = serde_json::Map::new();
        o.insert("server_metrics".into(), url.into());
        for (k, v) in &rows {
            o.insert((*k).to_owned(), v.clone().into());
        }
        return format!("{}\n", serde_json::Value::Object(o));
    }
    let rows: Vec<Vec<String>> = rows.into_iter().map(|(k, v)| vec![k.to_owned(), v]).collect();
    format!(
        "\nserver, from {url} (counters: during the run; gauges: at the end)\n{}",
        render(None, &rows, &[Align::Left, Align::Left], "  ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_and_subtracts() {
        let before = Samples::parse("# HELP x\niocp_server_messages_total 10\n").unwrap();
        let after = Samples::parse(
            "iocp_server_messages_total 30\niocp_port_concurrency 2\n\
             iocp_server_service_seconds_bucket{le=\"1e-06\"} 5\n\
             iocp_server_service_seconds_bucket{le=\"+Inf\"} 10\n\
             iocp_pool_worker_packets_total{worker=\"0\"} 7\n",
        )
        .unwrap();
        assert_eq!(quantile(&before, &after, 0.5), Some(1e-6));
        assert_eq!(quantile(&before, &after, 0.99), Some(f64::INFINITY));
        let t = report("u", &before, &after, 2.0, false);
        assert!(t.contains("20 (10/s)"), "{t}");
        assert!(t.contains("packets per worker"), "{t}");
        assert!(Samples::parse("name notanumber").is_err());
    }

    #[test]
    fn base_urls_get_the_metrics_path() {
        assert_eq!(metrics_url("127.0.0.1:9100"), "http://127.0.0.1:9100/metrics");
        assert_eq!(metrics_url("http://h:1/"), "http://h:1/metrics");
        assert_eq!(metrics_url("http://h:1/metrics"), "http://h:1/metrics");
    }
}
