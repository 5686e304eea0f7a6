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
    init_logging(&cli.server.log);
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
    let command = cli.command.unwrap_or(Command::Serve);
    if let Err(e) = run(command, cli.server, &runtime) {
        eprintln!("raftkv: {e}");
        std::process::exit(1);
    }
}

/// Logs to standard error, filtered by `--log` (RUST_LOG syntax), in colour on a
/// terminal only.
fn init_logging(log: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// Runs one subcommand (serving, without one) to its end; what it prints goes to
/// standard output, an error is returned.
fn run(
    command: Command,
    server: raftkv_server::config::ServerConfig,
    runtime: &tokio::runtime::Runtime,
) -> Result<(), String> {
    use raftkv_server::cli;
    let printed = |out: Result<String, String>| out.map(|out| print!("{out}"));
    match command {
        Command::Serve => runtime
            .block_on(raftkv_server::server::run(server))
            .map_err(|e| e.to_string()),
        Command::Snapshot(SnapshotCommand::Save { file, client }) => runtime
            .block_on(cli::snapshot::save(
                &client.endpoints,
                &file,
                &access(&client),
            ))
            .map(|size_bytes| println!("Snapshot saved at {} ({size_bytes} bytes)", file.display()))
            .map_err(|e| e.to_string()),
        Command::Snapshot(SnapshotCommand::Restore { file, data_dir, s3 }) => {
            let s3 = s3.config()?;
            match s3 {
                None => cli::snapshot::restore(&file, &data_dir).map_err(|e| e.to_string()),
                Some(s3) => runtime.block_on(cli::snapshot::restore_from_s3(
                    s3,
                    &file.to_string_lossy(),
                    &data_dir,
                )),
            }
            .map(|()| println!("Snapshot restored into {}", data_dir.display()))
        }
        Command::Snapshot(SnapshotCommand::ToEtcd { file, out }) => {
            cli::snapshot::to_etcd(&file, &out)
                .map(|e| {
                    println!(
                        "etcd snapshot written at {} ({} bytes, revision {}, {} history entries); \
                     restore it with etcdutl snapshot restore",
                        out.display(),
                        e.bytes,
                        e.revision,
                        e.history_entries
                    )
                })
                .map_err(|e| e.to_string())
        }
        Command::Status { write_out, client } => printed(
            runtime
                .block_on(cli::status::run(
                    &client.endpoints,
                    &access(&client),
                    &write_out,
                ))
                .map_err(|e| e.to_string()),
        ),
        command @ Command::Migrate { .. } => migrate(command, runtime),
        Command::Defrag { client } => printed(
            runtime
                .block_on(cli::defrag::run(&client.endpoints, &access(&client)))
                .map_err(|e| e.to_string()),
        ),
        Command::Member { action, client } => printed(
            runtime
                .block_on(cli::member::run(
                    &client.endpoints,
                    &access(&client),
                    member_action(action),
                ))
                .map_err(|e| e.to_string()),
        ),
        Command::CheckDisk { data_dir, writes } => {
            let report = cli::check_disk::check(&data_dir, writes)
                .map_err(|e| format!("cannot measure {}: {e}", data_dir.display()))?;
            print!("{}", report.render());
            let device = cli::disk_device::device_of(&data_dir);
            match &device {
                Some(device) => println!("device: {}", device.describe()),
                None => println!("device: not a block device Linux describes (tmpfs, overlay, FUSE or a network file system)"),
            }
            let device_warning = device.as_ref().and_then(|d| d.warning());
            if let Some(warning) = &device_warning {
                print!("{warning}");
            }
            if report.slow() || device_warning.is_some() {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// `raftkv migrate --from …`: the source's and the destination's TLS, then the copy.
fn migrate(command: Command, runtime: &tokio::runtime::Runtime) -> Result<(), String> {
    use raftkv_server::net::tls::ClientTls;
    let Command::Migrate {
        from,
        cacert,
        cert,
        key,
        user,
        endpoints,
        to_cacert,
        to_cert,
        to_key,
    } = command
    else {
        return Err("not a migrate command".into());
    };
    let from_tls = ClientTls { cacert, cert, key };
    let to_tls = ClientTls {
        cacert: to_cacert,
        cert: to_cert,
        key: to_key,
    };
    let copied = runtime
        .block_on(raftkv_server::cli::migrate::run(
            &from,
            &from_tls,
            user.as_deref(),
            &endpoints,
            &to_tls,
        ))
        .map_err(|e| e.to_string())?;
    println!(
        "Copied {} keys and {} leases at revision {} of {from}; the counts match.",
        copied.keys, copied.leases, copied.revision
    );
    let auth = copied.auth;
    if auth.users + auth.roles > 0 {
        println!(
            "Copied {} roles with their permissions and {} users with their roles. etcd's API \
             never gives out passwords: set each user's with `etcdctl user passwd NAME`{}.",
            auth.roles,
            auth.users,
            if auth.enabled_at_source {
                ", then turn authentication on with `etcdctl auth enable`, as it was on the source"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// The member subcommand's flags as the action `cli::member` performs.
fn member_action(command: MemberCommand) -> MemberAction {
    let split = |urls: String| urls.split(',').map(|u| u.trim().to_string()).collect();
    match command {
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
    }
}

/// Where and as whom a client subcommand reaches members.
fn access(client: &raftkv_server::config::ClientArgs) -> raftkv_server::cli::client::Access {
    raftkv_server::cli::client::Access {
        tls: client.tls(),
        user: client.user.clone(),
    }
}
