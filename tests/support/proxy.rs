//! A TCP proxy on 127.0.0.1 between a client and a test server, to inject faults: pass,
//! delay, blackhole (a partition: nothing moves until it heals, then the held bytes flow
//! on, as TCP would deliver them), and reset every connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Pass,
    Delay(Duration),
    Blackhole,
}

/// The proxy; its tasks stop when it is dropped.
pub struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Bumped by `reset_all`: every connection alive at that moment is reset.
    resets: watch::Sender<u64>,
    live: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (mode, _) = watch::channel(Mode::Pass);
        let (resets, _) = watch::channel(0u64);
        let proxy = Proxy {
            addr,
            mode,
            resets,
            live: Arc::default(),
            stop: CancellationToken::new(),
        };
        let (mode, resets, live, stop) = (
            proxy.mode.subscribe(),
            proxy.resets.subscribe(),
            proxy.live.clone(),
            proxy.stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let inbound = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((socket, _)) => socket,
                        Err(_) => continue,
                    },
                };
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue; // server down: the client sees its connection close
                };
                let conn = Connection {
                    mode: mode.clone(),
                    resets: resets.clone(),
                    live: live.clone(),
                    stop: stop.clone(),
                };
                tokio::spawn(conn.run(inbound, outbound));
            }
        });
        proxy
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn pass(&self) {
        self.mode.send_replace(Mode::Pass);
    }

    /// Forwards every chunk after `delay` (order kept).
    pub fn delay(&self, delay: Duration) {
        self.mode.send_replace(Mode::Delay(delay));
    }

    /// Accepts connections but moves no byte until `pass`/`delay`.
    pub fn blackhole(&self) {
        self.mode.send_replace(Mode::Blackhole);
    }

    /// Resets (RST) every connection open now; new ones are accepted as usual.
    pub fn reset_all(&self) {
        self.resets.send_modify(|n| *n += 1);
    }

    pub fn connection_count(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Connection {
    mode: watch::Receiver<Mode>,
    resets: watch::Receiver<u64>,
    live: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Connection {
    async fn run(mut self, inbound: TcpStream, outbound: TcpStream) {
        self.live.fetch_add(1, Ordering::SeqCst);
        self.resets.mark_unchanged();
        let (mut in_read, mut in_write) = inbound.into_split();
        let (mut out_read, mut out_write) = outbound.into_split();
        let upstream = pump(&mut in_read, &mut out_write, self.mode.clone());
        let downstream = pump(&mut out_read, &mut in_write, self.mode.clone());
        let reset = tokio::select! {
            _ = upstream => false,
            _ = downstream => false,
            _ = self.resets.changed() => true,
            _ = self.stop.cancelled() => true,
        };
        if reset {
            // SO_LINGER 0: closing sends RST instead of FIN, like a dropped NAT entry.
            let inbound = in_read.reunite(in_write).expect("same socket");
            let outbound = out_read.reunite(out_write).expect("same socket");
            let _ = inbound.set_zero_linger();
            let _ = outbound.set_zero_linger();
        }
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` under the current mode; returns when either side closes.
async fn pump(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if mode.wait_for(|m| *m != Mode::Blackhole).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // A partition that began during the read holds these bytes until it heals.
        let current = match mode.wait_for(|m| *m != Mode::Blackhole).await {
            Ok(m) => *m,
            Err(_) => return,
        };
        if let Mode::Delay(d) = current {
            tokio::time::sleep(d).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
