//! Added latency of the resolver: the same A question asked of the fake upstream directly and
//! through loom-dns, interleaved in one run, over UDP on loopback. Prints medians, p90 and the
//! ratio. `cargo bench -p loom-dns --bench latency`

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use loom_dns::Limits;
use simple_dns::TYPE;
use tokio::net::UdpSocket;

const ROUNDS: usize = 3000;

async fn once(sock: &UdpSocket, to: SocketAddr, msg: &[u8], buf: &mut [u8]) -> Duration {
    let t = Instant::now();
    sock.send_to(msg, to).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(buf)).await.expect("a reply").unwrap();
    let took = t.elapsed();
    assert!(n > 12);
    took
}

fn quantile(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * q) as usize]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let up = FakeUpstream::start(vec![(
            "bench.test",
            answer(vec![
                ("bench.test", 60, Rr::A("192.0.2.1".parse().unwrap())),
                ("bench.test", 60, Rr::A("192.0.2.2".parse().unwrap())),
            ]),
        )])
        .await;
        let dns = start_resolver(policy(&["bench.test"]), vec![up.addr], Limits::default()).await;
        let direct_sock = UdpSocket::bind((WEAVER_A, 0)).await.unwrap();
        let via_sock = UdpSocket::bind((WEAVER_A, 0)).await.unwrap();
        let msg = query(0x5151, "bench.test", TYPE::A, None);
        let mut buf = vec![0u8; 4096];
        for _ in 0..200 {
            once(&direct_sock, up.addr, &msg, &mut buf).await;
            once(&via_sock, dns.addr, &msg, &mut buf).await;
        }
        let (mut direct, mut via) = (Vec::with_capacity(ROUNDS), Vec::with_capacity(ROUNDS));
        for _ in 0..ROUNDS {
            direct.push(once(&direct_sock, up.addr, &msg, &mut buf).await);
            via.push(once(&via_sock, dns.addr, &msg, &mut buf).await);
        }
        let (d50, v50) = (quantile(&mut direct, 0.5), quantile(&mut via, 0.5));
        let (d90, v90) = (quantile(&mut direct, 0.9), quantile(&mut via, 0.9));
        println!("loom-dns latency, {ROUNDS} A questions each, UDP on loopback, interleaved");
        println!("  fake upstream directly: median {d50:?}  p90 {d90:?}");
        println!("  through loom-dns:       median {v50:?}  p90 {v90:?}");
        println!(
            "  added (median): {:?}   ratio: {:.2}",
            v50.saturating_sub(d50),
            v50.as_secs_f64() / d50.as_secs_f64()
        );
        let stats = dns.resolver.stats();
        assert_eq!(stats.answered as usize, ROUNDS + 200, "{stats:?}");
    });
}
