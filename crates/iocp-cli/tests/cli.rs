//! Smoke tests of the `iocp` binary: it runs, exits 0 and prints what it should.

use std::time::Duration;

mod common;

use common::iocp;

#[test]
fn probe_json_is_one_object_with_a_backend() {
    let run = iocp(&["probe", "--json"], Duration::from_secs(30));
    assert!(run.status.success(), "status {}; stderr:\n{}", run.status, run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "expected one JSON line, got:\n{}", run.stdout);
    let line = lines[0];
    assert!(line.starts_with('{') && line.ends_with('}'), "not an object: {line}");
    assert!(
        line.starts_with(r#"{"backend":"io_uring","#) || line.starts_with(r#"{"backend":"epoll","#),
        "no backend field first: {line}"
    );
    assert!(line.contains(r#""kernel":"#), "no kernel field: {line}");
    assert!(line.contains(r#""io_uring":{"available":"#), "no io_uring field: {line}");
}

#[test]
fn probe_prints_a_table() {
    let run = iocp(&["probe"], Duration::from_secs(30));
    assert!(run.status.success(), "status {}; stderr:\n{}", run.status, run.stderr);
    assert!(run.stdout.starts_with("backend "), "stdout:\n{}", run.stdout);
    assert!(run.stdout.contains("\nkernel "), "stdout:\n{}", run.stdout);
}

#[test]
fn demo_runs_on_epoll() {
    let run = iocp(&["demo", "--seconds", "1", "--backend", "epoll"], Duration::from_secs(60));
    assert!(
        run.status.success(),
        "status {}; stdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    let row = run
        .stdout
        .lines()
        .find(|l| l.starts_with("epoll ") && l.contains('|'))
        .unwrap_or_else(|| panic!("no epoll row in:\n{}", run.stdout));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert_eq!(cells.len(), 11, "row: {row}");
    // post→get, echo msgs/s, http req/s, chat deliveries/s and syslog msgs/s written measured
    // something.
    for i in [1, 2, 4, 6, 8] {
        let n: u64 = cells[i].replace(',', "").parse().unwrap_or(0);
        assert!(n > 0, "column {i} of {row}");
    }
    assert_eq!(cells[9], "0", "syslog lost: {row}");
    assert!(cells[10].parse::<f64>().is_ok_and(|c| c > 0.0), "syslog CPU per message: {row}");
    assert!(run.stderr.contains("running epoll"), "stderr:\n{}", run.stderr);
}

#[test]
fn bad_backend_exits_2() {
    let run = iocp(&["demo", "--backend", "kqueue"], Duration::from_secs(30));
    assert_eq!(run.status.code(), Some(2), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("kqueue"), "stderr:\n{}", run.stderr);
}
