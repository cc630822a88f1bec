//! `iocp probe`: which backend `Auto` would pick and why.

use std::io::{self, Write};

use iocp::BackendReport;

use crate::json::Json;
use crate::table::{self, Align};

/// Runs `iocp probe`.
pub(crate) fn run(json: bool) -> anyhow::Result<()> {
    let report = iocp::probe();
    let mut out = io::stdout().lock();
    if json {
        writeln!(out, "{}", to_json(&report))?;
    } else {
        out.write_all(human(&report).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// The `kernel.io_uring_disabled` sysctl, trimmed, when readable (absent before Linux 6.6).
fn io_uring_disabled() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok().map(|s| s.trim().to_owned())
}

fn disabled_meaning(v: &str) -> &'static str {
    match v {
        "0" => "io_uring allowed for all processes",
        "1" => "io_uring only for CAP_SYS_ADMIN or kernel.io_uring_group",
        "2" => "io_uring disabled for all processes",
        _ => "unknown value",
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

/// The report as an aligned two-column table.
pub(crate) fn human(report: &BackendReport) -> String {
    let mut rows: Vec<Vec<String>> = vec![
        vec!["backend".into(), report.kind().to_string()],
        vec!["reason".into(), report.reason().to_owned()],
        vec!["kernel".into(), report.kernel().to_owned()],
    ];
    let disabled = match io_uring_disabled() {
        Some(v) => format!("{v} ({})", disabled_meaning(&v)),
        None => "unreadable (no such sysctl before Linux 6.6)".to_owned(),
    };
    rows.push(vec!["io_uring_disabled".into(), disabled]);
    match report.uring() {
        Ok(caps) => {
            rows.push(vec!["io_uring".into(), "available".into()]);
            rows.push(vec![
                "  ext_arg".into(),
                format!("{} (required: wait with a timeout)", yes_no(caps.ext_arg)),
            ]);
            rows.push(vec![
                "  nodrop".into(),
                format!("{} (kernel keeps CQEs on overflow)", yes_no(caps.nodrop)),
            ]);
            for (name, ok) in &caps.opcodes {
                rows.push(vec![format!("  opcode {name}"), yes_no(*ok)]);
            }
            for (name, ok) in &caps.features {
                rows.push(vec![format!("  feature {name}"), yes_no(*ok)]);
            }
            for (name, ok) in &caps.optional {
                rows.push(vec![format!("  unused {name}"), yes_no(*ok)]);
            }
        }
        Err(why) => rows.push(vec!["io_uring".into(), format!("unavailable: {why}")]),
    }
    table::render(None, &rows, &[Align::Left, Align::Left], "  ")
}

/// The report as one JSON object.
pub(crate) fn to_json(report: &BackendReport) -> Json {
    let flags = |list: &[(&'static str, bool)]| {
        Json::Obj(list.iter().map(|(n, ok)| (*n, Json::Bool(*ok))).collect())
    };
    let uring = match report.uring() {
        Ok(caps) => Json::Obj(vec![
            ("available", Json::Bool(true)),
            ("ext_arg", Json::Bool(caps.ext_arg)),
            ("nodrop", Json::Bool(caps.nodrop)),
            ("opcodes", flags(&caps.opcodes)),
            ("features", flags(&caps.features)),
            ("optional", flags(&caps.optional)),
        ]),
        Err(why) => Json::Obj(vec![("available", Json::Bool(false)), ("error", Json::str(why))]),
    };
    let disabled = match io_uring_disabled() {
        None => Json::Null,
        Some(v) => v.parse::<u64>().map_or(Json::Str(v), Json::Int),
    };
    Json::Obj(vec![
        ("backend", Json::str(report.kind().to_string())),
        ("reason", Json::str(report.reason())),
        ("kernel", Json::str(report.kernel())),
        ("io_uring_disabled", disabled),
        ("io_uring", uring),
    ])
}
