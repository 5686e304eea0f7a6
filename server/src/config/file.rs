//! `--config FILE` (or RAFTKV_CONFIG): every server flag from a YAML file, its keys the
//! long flag names, as k3s's config.yaml does:
//!
//! ```yaml
//! name: a
//! data-dir: /var/lib/raftkv
//! cluster-init: true
//! listen-client-urls: [https://10.0.0.1:2379, https://127.0.0.1:2379]
//! ```
//!
//! The file's entries become flags placed before the command line's, so a flag given on
//! the command line wins, and so does its RAFTKV_* environment variable. Unknown keys,
//! nested maps and unreadable files are refused with the file and key named. This
//! module only rewrites the argument list; clap still checks every value.

use std::ffi::OsString;
use std::path::Path;

use clap::CommandFactory;
use yaml_rust2::{Yaml, YamlLoader};

use crate::config::Cli;

/// The config file named by `--config`/`--config=` in `args`, or by RAFTKV_CONFIG.
fn config_path(args: &[OsString]) -> Option<OsString> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let s = arg.to_string_lossy();
        if s == "--config" {
            return iter.next().cloned();
        }
        if let Some(path) = s.strip_prefix("--config=") {
            return Some(path.into());
        }
    }
    std::env::var_os("RAFTKV_CONFIG")
}

/// `args` with the config file's flags inserted after the program name.
pub fn expand(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Some(path) = config_path(&args) else {
        return Ok(args);
    };
    let from_file = flags_from_file(Path::new(&path))?;
    let mut out = Vec::with_capacity(args.len() + from_file.len());
    let mut rest = args.into_iter();
    out.extend(rest.next());
    out.extend(from_file);
    out.extend(rest);
    Ok(out)
}

/// A value as flag text: lists become comma-separated, as the URL flags take them.
fn scalar(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        Yaml::Array(items) => items
            .iter()
            .map(scalar)
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(",")),
        _ => None,
    }
}

fn flags_from_file(path: &Path) -> Result<Vec<OsString>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("--config {shown}: {e}"))?;
    let docs = YamlLoader::load_from_str(&text).map_err(|e| format!("--config {shown}: {e}"))?;
    let entries = match docs.into_iter().next() {
        None | Some(Yaml::Null) => return Ok(Vec::new()),
        Some(Yaml::Hash(map)) => map,
        Some(_) => return Err(format!("--config {shown}: want `flag-name: value` lines")),
    };
    let command = Cli::command();
    let mut flags = Vec::new();
    for (key, value) in entries {
        let Some(key) = key.as_str().map(str::to_string) else {
            return Err(format!("--config {shown}: a key is not a flag name"));
        };
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config")
            .ok_or_else(|| {
                format!("--config {shown}: unknown key {key:?} (keys are raftkv's long flag names, see raftkv --help)")
            })?;
        // RAFTKV_* from the environment wins over the file.
        if arg
            .get_env()
            .is_some_and(|env| std::env::var_os(env).is_some())
        {
            continue;
        }
        let takes_value = arg.get_action().takes_values();
        match (&value, takes_value) {
            (Yaml::Boolean(true), false) => flags.push(OsString::from(format!("--{key}"))),
            (Yaml::Boolean(false), false) => {}
            (_, false) => {
                return Err(format!(
                    "--config {shown}: {key} is a switch: write `{key}: true`"
                ))
            }
            (value, true) => {
                let text = scalar(value).ok_or_else(|| {
                    format!("--config {shown}: {key}: want a value or a list of values")
                })?;
                flags.push(OsString::from(format!("--{key}={text}")));
            }
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_with(yaml: &str, cli: &[&str]) -> Result<Vec<String>, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("raftkv.yaml");
        std::fs::write(&path, yaml).map_err(|e| e.to_string())?;
        let mut args: Vec<OsString> = vec!["raftkv".into(), "--config".into(), path.clone().into()];
        args.extend(cli.iter().map(OsString::from));
        expand(args).map(|a| {
            a.into_iter()
                .map(|s| s.to_string_lossy().into_owned())
                .filter(|s| !s.ends_with("raftkv.yaml"))
                .collect()
        })
    }

    #[test]
    fn keys_become_flags_before_the_command_line() {
        let args = expand_with(
            "name: a\ncluster-init: true\nlearner: false\nlisten-client-urls:\n  - http://127.0.0.1:1\n  - http://127.0.0.1:2\nsnapshot-retention: 3\n",
            &["--name", "b"],
        )
        .expect("expands");
        assert_eq!(
            args,
            vec![
                "raftkv",
                "--name=a",
                "--cluster-init",
                "--listen-client-urls=http://127.0.0.1:1,http://127.0.0.1:2",
                "--snapshot-retention=3",
                "--config",
                "--name",
                "b"
            ]
        );
    }

    /// deploy/config/*.yaml, what docs/k3s-ha.md tells people to install, must parse.
    #[test]
    fn the_example_configs_in_deploy_parse() {
        use clap::Parser;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config");
        for name in ["a.yaml", "b.yaml", "c.yaml"] {
            let args = vec!["raftkv".into(), "--config".into(), dir.join(name).into()];
            let args = expand(args).unwrap_or_else(|e| panic!("{name}: {e}"));
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{name}: {e}"));
            let server = cli.server;
            assert_eq!(server.cluster_init, name == "a.yaml", "{name}");
            assert_eq!(
                server.join.as_deref(),
                (name != "a.yaml").then_some("https://10.0.0.1:2380"),
                "{name}"
            );
            assert!(
                server.client_cert_auth && server.peer_client_cert_auth,
                "{name}"
            );
            let backups = server.backups().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(backups.is_some_and(|b| b.retention == 5), "{name}");
        }
    }

    #[test]
    fn mistakes_name_the_file_and_the_key() {
        let e = expand_with("data_dir: /x\n", &[]).expect_err("unknown key");
        assert!(
            e.contains("raftkv.yaml") && e.contains("\"data_dir\""),
            "{e}"
        );
        let e = expand_with("cluster-init: yes please\n", &[]).expect_err("switch");
        assert!(e.contains("cluster-init is a switch"), "{e}");
        let e = expand_with("name: [a, {b: c}]\n", &[]).expect_err("nested");
        assert!(e.contains("name"), "{e}");
        let e = expand_with("name: a\n  bad: indent\n", &[]).expect_err("not yaml");
        assert!(e.contains("raftkv.yaml"), "{e}");
    }
}
