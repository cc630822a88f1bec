//! `iocp serve chat` end to end in its own process: the page on the web port, two `nc`-style
//! line clients talking, and the goodbye on SIGTERM.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use common::server::{ServerProcess, field};
use iocp_testkit::deadline;

fn line_client(addr: SocketAddr) -> (BufReader<TcpStream>, TcpStream) {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(deadline())).expect("timeout");
    (BufReader::new(s.try_clone().expect("clone")), s)
}

fn expect(r: &mut BufReader<TcpStream>, needle: &str) -> String {
    loop {
        let mut l = String::new();
        assert!(r.read_line(&mut l).expect("read") > 0, "EOF waiting for {needle:?}");
        if l.contains(needle) {
            return l;
        }
    }
}

#[test]
fn serve_chat_runs_both_transports_and_says_goodbye() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_iocp"));
    cmd.args(["serve", "chat", "--addr", "127.0.0.1:0", "--tcp", "127.0.0.1:0"]).args([
        "--threads",
        "2",
        "--history",
        "3",
    ]);
    let server = ServerProcess::spawn(cmd).expect("iocp serve chat starts");
    let tcp: SocketAddr = loop {
        let (_, line) = server.lines.recv_timeout(deadline()).expect("the tcp line");
        if let Some(rest) = line.split("line protocol on tcp ").nth(1) {
            break rest.split_whitespace().next().expect("addr").parse().expect("an address");
        }
    };
    // The page.
    let mut web = TcpStream::connect(server.addr).expect("connect");
    web.set_read_timeout(Some(deadline())).expect("timeout");
    web.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").expect("write");
    let mut buf = vec![0; 4096];
    let n = web.read(&mut buf).expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 OK"));
    // Two line clients.
    let (mut ra, mut a) = line_client(tcp);
    expect(&mut ra, "* welcome");
    a.write_all(b"/nick ann\nearly words\n").expect("write");
    expect(&mut ra, "<ann> early words");
    let (mut rb, mut b) = line_client(tcp);
    expect(&mut rb, "* welcome");
    // The history came with the join.
    expect(&mut rb, "<ann> early words");
    b.write_all(b"/msg ann hi ann\n").expect("write");
    expect(&mut ra, "-> ann* hi ann");
    let report = server.stop();
    assert!(field(&report, "connections accepted") >= 1, "{report}");
    expect(&mut ra, "* server shutting down");
    expect(&mut rb, "* server shutting down");
}
