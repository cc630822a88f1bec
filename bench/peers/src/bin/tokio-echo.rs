//! A tokio echo server: the multi-thread runtime with `--threads` workers, one task per
//! connection doing read → write_all on a 4 KiB buffer (the usual tokio echo example).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn main() -> std::io::Result<()> {
    let args = iocp_bench_peers::args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_io()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(args.addr).await?;
        eprintln!("tokio-echo: listening on {} with {} workers", args.addr, args.threads);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (mut sock, _) = match accepted {
                        Ok(a) => a,
                        Err(e) => { eprintln!("tokio-echo: accept: {e}"); continue; }
                    };
                    let _ = sock.set_nodelay(true);
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 4096];
                        loop {
                            let n = match sock.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if sock.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    })
}
