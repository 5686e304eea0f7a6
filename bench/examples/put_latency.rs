//! Sequential puts against an endpoint, printing the latency distribution: a quick
//! look at where a write's time goes. `cargo run --release -p raftkv-bench --example
//! put_latency -- 127.0.0.1:2379 2000`

use std::time::{Duration, Instant};

fn main() {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:2379".into());
    let n: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([endpoint], None)
            .await
            .expect("connect");
        let value = vec![0x5au8; 256];
        let mut lat: Vec<Duration> = Vec::with_capacity(n);
        for i in 0..n {
            let t = Instant::now();
            c.put(format!("lat/{}", i % 1000), value.clone(), None)
                .await
                .expect("put");
            lat.push(t.elapsed());
        }
        lat.sort();
        let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
        println!(
            "{n} puts: min {:?} p50 {:?} p90 {:?} p99 {:?} max {:?}",
            lat[0],
            p(0.5),
            p(0.9),
            p(0.99),
            lat[lat.len() - 1]
        );
    });
}
