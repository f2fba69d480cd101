//! An optional TOML settings file for a command-line program: each key is the long name
//! of one of its flags (`data-dir` or `data_dir`), each value what the flag would take.
//! The file's values become the flags' defaults, so the precedence is: flag, then
//! environment variable, then file, then the built-in default; and every value passes the
//! flag's own parser, so a bad one is refused at start, named by file and key. clap checks
//! ties between flags (`requires`) only for values given explicitly, so a program whose
//! flags depend on each other checks those pairs itself after parsing.
//!
//! ```toml
//! listen = "0.0.0.0:50051"
//! data-dir = "/var/lib/savepointd"
//! etcd-endpoint = ["etcd-0:2379", "etcd-1:2379"]   # a repeatable flag takes a list
//! s3-allow-http = true
//! ```

use clap::Command;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// Why a settings file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read the config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {}: not valid TOML: {detail}", path.display())]
    Syntax { path: PathBuf, detail: String },
    #[error("config file {}: {key}: {detail}", path.display())]
    Setting {
        path: PathBuf,
        key: String,
        detail: String,
    },
}

/// `command` with the values of the settings file at `path` as its flags' defaults.
pub fn apply(command: Command, path: &Path) -> Result<Command, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let table: toml::Table =
        text.parse()
            .map_err(|e: toml::de::Error| ConfigFileError::Syntax {
                path: path.to_path_buf(),
                detail: e.message().to_string(),
            })?;
    let setting_error = |key: &str, detail: String| ConfigFileError::Setting {
        path: path.to_path_buf(),
        key: key.to_string(),
        detail,
    };
    let mut command = command;
    for (key, value) in &table {
        let flag = key.replace('_', "-");
        let Some(arg) = command
            .get_arguments()
            .find(|a| a.get_long() == Some(flag.as_str()) && !a.is_positional())
        else {
            return Err(setting_error(
                key,
                "no such setting (keys are the long flag names, see --help)".to_string(),
            ));
        };
        if flag == "config" {
            return Err(setting_error(
                key,
                "a config file cannot name another".into(),
            ));
        }
        let values = flag_values(value).map_err(|detail| setting_error(key, detail))?;
        let repeatable = matches!(arg.get_action(), clap::ArgAction::Append);
        if values.len() != 1 && !repeatable {
            return Err(setting_error(key, "takes one value, not a list".into()));
        }
        let values: Vec<clap::builder::OsStr> = values
            .into_iter()
            .map(|v| clap::builder::Str::from(v).into())
            .collect();
        // The flag alone, its environment variable ignored, parsed with the file's value
        // as its default: checked by the flag's own parser, as strictly as the flag.
        // (Its ties to other flags are left out: they are not in the probe.)
        let probe = Command::new("config-file").no_binary_name(true).arg(
            arg.clone()
                .env(None)
                .required(false)
                .requires(clap::builder::Resettable::<clap::Id>::Reset)
                .conflicts_with(clap::builder::Resettable::<clap::Id>::Reset)
                .default_values(values.clone()),
        );
        probe
            .try_get_matches_from(std::iter::empty::<&OsStr>())
            .map_err(|e| setting_error(key, first_line(&e.to_string())))?;
        let id = arg.get_id().clone();
        command = command.mut_arg(id, |arg| arg.default_values(values));
    }
    Ok(command)
}

/// The flag arguments a TOML value stands for.
fn flag_values(value: &toml::Value) -> Result<Vec<String>, String> {
    match value {
        toml::Value::String(text) => Ok(vec![text.clone()]),
        toml::Value::Integer(number) => Ok(vec![number.to_string()]),
        toml::Value::Boolean(flag) => Ok(vec![flag.to_string()]),
        toml::Value::Float(number) => Ok(vec![number.to_string()]),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| match item {
                toml::Value::Array(_) | toml::Value::Table(_) => {
                    Err("a list may hold only plain values".to_string())
                }
                plain => flag_values(plain).map(|mut v| v.remove(0)),
            })
            .collect(),
        toml::Value::Table(_) => {
            Err("tables are not settings: the file is flat, one key per flag".to_string())
        }
        toml::Value::Datetime(_) => Err("a date is not a value of any setting".to_string()),
    }
}

/// clap's message without its usage lines.
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or(message);
    line.trim_start_matches("error: ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction, value_parser};

    fn command() -> Command {
        Command::new("t")
            .arg(Arg::new("config").long("config"))
            .arg(
                Arg::new("port")
                    .long("port")
                    .env("T_PORT")
                    .value_parser(value_parser!(u16))
                    .default_value("1"),
            )
            .arg(
                Arg::new("endpoint")
                    .long("endpoint")
                    .action(ArgAction::Append),
            )
            .arg(
                Arg::new("allow-http")
                    .long("allow-http")
                    .requires("endpoint")
                    .action(ArgAction::SetTrue),
            )
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn file_values_are_defaults_that_flags_override() {
        let settings = file("port = 7\nendpoint = [\"a:1\", \"b:2\"]\nallow_http = true\n");
        let command = apply(command(), settings.path()).unwrap();
        let matches = command.clone().get_matches_from(["t"]);
        assert_eq!(matches.get_one::<u16>("port"), Some(&7));
        let endpoints: Vec<&String> = matches.get_many("endpoint").unwrap().collect();
        assert_eq!(endpoints, ["a:1", "b:2"]);
        assert!(matches.get_flag("allow-http"));
        let matches = command.get_matches_from(["t", "--port", "9"]);
        assert_eq!(matches.get_one::<u16>("port"), Some(&9));
    }

    #[test]
    fn bad_settings_are_named_by_file_and_key() {
        let cases = [
            ("colour = 1", "colour: no such setting"),
            ("port = 70000", "port: invalid value '70000'"),
            ("port = [1, 2]", "port: takes one value"),
            ("[port]\nx = 1", "port: tables are not settings"),
            (
                "config = \"other.toml\"",
                "config: a config file cannot name another",
            ),
            ("port = ", "not valid TOML"),
        ];
        for (text, expected) in cases {
            let settings = file(text);
            let error = apply(command(), settings.path()).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(
                error.contains(&settings.path().display().to_string()),
                "{error}"
            );
        }
        let missing = apply(command(), Path::new("/nonexistent/settings.toml")).unwrap_err();
        assert!(matches!(missing, ConfigFileError::Read { .. }), "{missing}");
    }
}
