//! A monoio echo server: one thread per `--threads`, each with its own runtime (io_uring driver,
//! falling back to the legacy epoll driver where io_uring is unavailable) and its own
//! SO_REUSEPORT listener; one task per connection doing read → write_all on a 4 KiB buffer.

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{ListenerOpts, TcpListener};

fn main() {
    let args = iocp_bench_peers::args();
    let threads: Vec<_> = (0..args.threads)
        .map(|i| {
            let addr = args.addr;
            std::thread::spawn(move || {
                let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .build()
                    .expect("building a monoio runtime");
                rt.block_on(async move {
                    let opts = ListenerOpts::default().reuse_port(true);
                    let listener =
                        TcpListener::bind_with_config(addr, &opts).expect("binding the listener");
                    if i == 0 {
                        eprintln!("monoio-echo: listening on {addr} with {} threads", args.threads);
                    }
                    loop {
                        let Ok((sock, _)) = listener.accept().await else { continue };
                        let _ = sock.set_nodelay(true);
                        monoio::spawn(async move {
                            let mut sock = sock;
                            // The shape of monoio's own echo example: read appends to the
                            // Vec's spare capacity, write_all sends it, clear() resets.
                            let mut buf: Vec<u8> = Vec::with_capacity(4096);
                            loop {
                                let (res, b) = sock.read(buf).await;
                                buf = b;
                                match res {
                                    Ok(0) | Err(_) => return,
                                    Ok(_) => {}
                                }
                                let (res, b) = sock.write_all(buf).await;
                                buf = b;
                                if res.is_err() {
                                    return;
                                }
                                buf.clear();
                            }
                        });
                    }
                })
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}
