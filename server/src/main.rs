//! `raftkv`: parse the command line, set up logging, run the member.

use clap::Parser;
use raftkv_server::cli::member::MemberAction;
use raftkv_server::config::{Cli, Command, MemberCommand, SnapshotCommand};

/// jemalloc, not glibc's malloc: glibc's arenas spent about 15% of the leader's CPU
/// under 64 writers (malloc_consolidate, unlink_chunk), and jemalloc held less memory
/// with a million keys (docs/decisions.md, "jemalloc as the allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let args = match raftkv_server::config::file::expand(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("raftkv: {e}");
            std::process::exit(2);
        }
    };
    let cli = Cli::parse_from(args);
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.server.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.server.worker_threads())
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("raftkv: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result: Result<(), String> = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime
            .block_on(raftkv_server::server::run(cli.server))
            .map_err(|e| e.to_string()),
        Command::Snapshot(SnapshotCommand::Save { file, client }) => runtime
            .block_on(raftkv_server::cli::snapshot::save(
                &client.endpoints,
                &file,
                &client.tls(),
            ))
            .map(|size_bytes| println!("Snapshot saved at {} ({size_bytes} bytes)", file.display()))
            .map_err(|e| e.to_string()),
        Command::Status { write_out, client } => {
            let tls = client.tls();
            runtime
                .block_on(raftkv_server::cli::status::run(
                    &client.endpoints,
                    &tls,
                    &write_out,
                ))
                .map(|out| print!("{out}"))
                .map_err(|e| e.to_string())
        }
        Command::Migrate {
            from,
            cacert,
            cert,
            key,
            endpoints,
            to_cacert,
            to_cert,
            to_key,
        } => {
            use raftkv_server::net::tls::ClientTls;
            let from_tls = ClientTls { cacert, cert, key };
            let to_tls = ClientTls {
                cacert: to_cacert,
                cert: to_cert,
                key: to_key,
            };
            runtime
                .block_on(raftkv_server::cli::migrate::run(
                    &from, &from_tls, &endpoints, &to_tls,
                ))
                .map(|c| {
                    println!(
                        "Copied {} keys and {} leases at revision {} of {from}; the counts match.",
                        c.keys, c.leases, c.revision
                    )
                })
                .map_err(|e| e.to_string())
        }
        Command::Defrag { client } => runtime
            .block_on(raftkv_server::cli::defrag::run(
                &client.endpoints,
                &client.tls(),
            ))
            .map(|out| print!("{out}"))
            .map_err(|e| e.to_string()),
        Command::Member { action, client } => {
            let split = |urls: String| urls.split(',').map(|u| u.trim().to_string()).collect();
            let action = match action {
                MemberCommand::List => MemberAction::List,
                MemberCommand::Add {
                    name,
                    peer_urls,
                    learner,
                } => MemberAction::Add {
                    name,
                    peer_urls: split(peer_urls),
                    learner,
                },
                MemberCommand::Remove { id } => MemberAction::Remove { id },
                MemberCommand::Promote { id } => MemberAction::Promote { id },
                MemberCommand::Update { id, peer_urls } => MemberAction::Update {
                    id,
                    peer_urls: split(peer_urls),
                },
            };
            let tls = client.tls();
            runtime
                .block_on(raftkv_server::cli::member::run(
                    &client.endpoints,
                    &tls,
                    action,
                ))
                .map(|out| print!("{out}"))
                .map_err(|e| e.to_string())
        }
        Command::CheckDisk { data_dir, writes } => {
            match raftkv_server::cli::check_disk::check(&data_dir, writes) {
                Ok(report) => {
                    print!("{}", report.render());
                    if report.slow() {
                        std::process::exit(1);
                    }
                    Ok(())
                }
                Err(e) => Err(format!("cannot measure {}: {e}", data_dir.display())),
            }
        }
        Command::Snapshot(SnapshotCommand::Restore { file, data_dir, s3 }) => s3
            .config()
            .and_then(|s3| match s3 {
                None => raftkv_server::cli::snapshot::restore(&file, &data_dir)
                    .map_err(|e| e.to_string()),
                Some(s3) => runtime.block_on(raftkv_server::cli::snapshot::restore_from_s3(
                    s3,
                    &file.to_string_lossy(),
                    &data_dir,
                )),
            })
            .map(|()| println!("Snapshot restored into {}", data_dir.display())),
    };
    if let Err(e) = result {
        eprintln!("raftkv: {e}");
        std::process::exit(1);
    }
}
