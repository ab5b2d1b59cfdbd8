// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `--config FILE`: the command line in a TOML file.
//!
//! Every key is a long option's name and holds what the option takes: a string or a
//! number for an option with a value, `true` for a flag, an array for an option that
//! may be repeated (`tap-fd = [3, 4]`):
//!
//! ```toml
//! socket = "/run/vhost-netmem/vm1.sock"
//! tap = "tap-vm1"
//! queues = 2
//! tx-holdoff = 50
//! ```
//!
//! The file is turned into options placed before the command line's, leaving out
//! every option the command line gives itself: the command line overrides the file,
//! and one parser (clap's, with every check it makes) reads both. An error names the
//! file, the line and the key. [`Origins`] remembers which options came from which
//! line, so that a check made later ([`super::NetConfig::from_cli_with`]) can say so
//! too.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches};
use toml::{Spanned, Value};

use super::Cli;

/// Options a file cannot set: they are about this run of the program, not the
/// backend it configures.
const COMMAND_LINE_ONLY: &[&str] = &["config", "help", "version", "print-capabilities"];

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file cannot be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML (toml's message names the line and column).
    #[error("config file {}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A key that names no option, or one with a value it cannot take.
    #[error("config file {}, line {line}, key `{key}`: {why}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// 1-based line of the key.
        line: usize,
        /// The key.
        key: String,
        /// What is wrong.
        why: String,
    },
}

/// Where options set by the file came from: option name -> (key, line).
#[derive(Debug, Default, Clone)]
pub struct Origins {
    path: Option<PathBuf>,
    keys: BTreeMap<String, usize>,
}

impl Origins {
    /// `message` (an error about the configuration), followed by where the file set
    /// the option it names, if the file set one.
    pub fn explain(&self, message: &str) -> String {
        let Some(path) = &self.path else {
            return message.to_string();
        };
        for (key, line) in &self.keys {
            let flag = format!("--{key}");
            let named = message.match_indices(&flag).any(|(i, _)| {
                let next = message[i + flag.len()..].chars().next();
                !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
            });
            if named {
                return format!(
                    "{message} (set in config file {}, line {line}, key `{key}`)",
                    path.display()
                );
            }
        }
        message.to_string()
    }
}

/// What parsing the command line gives: the options, or an error for the caller to
/// show and exit with.
pub enum Parsed {
    /// The command line (and the file it names).
    Cli(Box<Cli>, Origins),
    /// A usage error, `--help` or `--version`: clap prints it and sets the exit code.
    Clap(clap::Error),
    /// The config file is unusable.
    File(ConfigFileError),
}

/// Parse `args` (argv, the program name first), reading the config file it names.
pub fn parse(args: Vec<OsString>) -> Parsed {
    let matches = match Cli::command().try_get_matches_from(&args) {
        Ok(m) => m,
        Err(e) => return Parsed::Clap(e),
    };
    let Some(path) = matches.get_one::<PathBuf>("config").cloned() else {
        return match Cli::from_arg_matches(&matches) {
            Ok(cli) => Parsed::Cli(Box::new(cli), Origins::default()),
            Err(e) => Parsed::Clap(e),
        };
    };
    let (file_args, origins) = match file_options(&path, &matches) {
        Ok(v) => v,
        Err(e) => return Parsed::File(e),
    };
    let mut all = Vec::with_capacity(args.len() + file_args.len());
    let mut args = args.into_iter();
    all.extend(args.next());
    all.extend(file_args);
    all.extend(args);
    match Cli::command()
        .try_get_matches_from(all)
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => Parsed::Cli(Box::new(cli), origins),
        Err(e) => match origins.blame(&e) {
            Some(file_error) => Parsed::File(file_error),
            None => Parsed::Clap(e),
        },
    }
}

impl Origins {
    /// A clap error about an option the file set, as an error naming the file's line.
    fn blame(&self, e: &clap::Error) -> Option<ConfigFileError> {
        let path = self.path.as_ref()?;
        let arg = match e.get(clap::error::ContextKind::InvalidArg)? {
            clap::error::ContextValue::String(s) => s.clone(),
            _ => return None,
        };
        let name = arg.trim_start_matches("--");
        let name = name.split([' ', '=', '<']).next().unwrap_or(name);
        let line = *self.keys.get(name)?;
        let rendered = e.render().to_string();
        let why = rendered
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_string();
        Some(ConfigFileError::Key {
            path: path.clone(),
            line,
            key: name.to_string(),
            why,
        })
    }
}

/// The options `path` sets that the command line (`matches`) does not.
fn file_options(
    path: &Path,
    matches: &ArgMatches,
) -> Result<(Vec<OsString>, Origins), ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let table: BTreeMap<Spanned<String>, Spanned<Value>> =
        toml::from_str(&text).map_err(|e| ConfigFileError::Syntax {
            path: path.to_path_buf(),
            message: e.message().to_string()
                + &e.span()
                    .map(|s| format!(" (line {})", line_of(&text, s.start)))
                    .unwrap_or_default(),
        })?;
    let mut keys: Vec<_> = table.into_iter().collect();
    keys.sort_by_key(|(k, _)| k.span().start);
    let command = Cli::command();
    let mut args = Vec::new();
    let mut origins = Origins {
        path: Some(path.to_path_buf()),
        keys: BTreeMap::new(),
    };
    for (key, value) in keys {
        let line = line_of(&text, key.span().start);
        let name = key.get_ref().as_str();
        let bad = |why: String| ConfigFileError::Key {
            path: path.to_path_buf(),
            line,
            key: name.to_string(),
            why,
        };
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(name))
            .filter(|_| !COMMAND_LINE_ONLY.contains(&name))
            .ok_or_else(|| {
                bad(if COMMAND_LINE_ONLY.contains(&name) {
                    "this option is for the command line only".to_string()
                } else {
                    "no such option (keys are the long options of --help, like queues = 2)"
                        .to_string()
                })
            })?;
        if matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
            continue;
        }
        let flag = OsString::from(format!("--{name}"));
        match (arg.get_action(), value.into_inner()) {
            (ArgAction::SetTrue, Value::Boolean(on)) => {
                if on {
                    args.push(flag);
                }
            }
            (ArgAction::SetTrue, _) => return Err(bad("takes true or false".to_string())),
            (ArgAction::Append, Value::Array(items)) => {
                for item in items {
                    args.push(flag.clone());
                    args.push(scalar(item).map_err(&bad)?);
                }
            }
            (_, Value::Array(_)) => {
                return Err(bad("takes one value, not an array".to_string()));
            }
            (_, v) => {
                args.push(flag);
                args.push(scalar(v).map_err(&bad)?);
            }
        }
        origins.keys.insert(name.to_string(), line);
    }
    Ok((args, origins))
}

/// An option's value from a TOML scalar.
fn scalar(v: Value) -> Result<OsString, String> {
    match v {
        Value::String(s) => Ok(s.into()),
        Value::Integer(i) => Ok(i.to_string().into()),
        Value::Float(f) => Ok(f.to_string().into()),
        Value::Boolean(b) => Ok(b.to_string().into()),
        other => Err(format!(
            "takes a string or a number, not {}",
            other.type_str()
        )),
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config file in the temp directory, removed when dropped.
    struct TempFile(PathBuf);

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn file(text: &str) -> TempFile {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "vnm-config-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    fn run(f: &TempFile, extra: &[&str]) -> Parsed {
        let mut args: Vec<OsString> =
            vec!["vhost-netmem".into(), "--config".into(), f.0.clone().into()];
        args.extend(extra.iter().map(OsString::from));
        parse(args)
    }

    fn cli(p: Parsed) -> (Cli, Origins) {
        match p {
            Parsed::Cli(c, o) => (*c, o),
            Parsed::Clap(e) => panic!("clap error: {e}"),
            Parsed::File(e) => panic!("file error: {e}"),
        }
    }

    fn file_error(p: Parsed) -> String {
        match p {
            Parsed::File(e) => e.to_string(),
            Parsed::Clap(e) => panic!("clap error, not a file error: {e}"),
            Parsed::Cli(..) => panic!("accepted"),
        }
    }

    #[test]
    fn every_kind_of_option_is_read() {
        let f = file(
            "socket = \"/tmp/x.sock\"\nqueues = 2\nonce = true\nclient = false\ntap-fd = [3, 4]\nmac = \"52:54:00:00:00:09\"\n",
        );
        let (c, _) = cli(run(&f, &[]));
        assert_eq!(c.socket.as_deref(), Some(Path::new("/tmp/x.sock")));
        assert_eq!(c.queues, 2);
        assert!(c.once);
        assert!(!c.client);
        assert_eq!(c.tap_fd, vec![3, 4]);
        assert_eq!(c.mac.as_deref(), Some("52:54:00:00:00:09"));
    }

    #[test]
    fn the_command_line_overrides_the_file() {
        let f = file("queues = 2\nmtu = 9000\ntap-fd = [3, 4]\n");
        let (c, _) = cli(run(
            &f,
            &["--queues", "1", "--tap-fd", "7", "--socket", "/s"],
        ));
        assert_eq!(c.queues, 1);
        assert_eq!(
            c.mtu, 9000,
            "the file's value stays where the command line is silent"
        );
        assert_eq!(c.tap_fd, vec![7]);
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let f = file("queues = 2\n\nqeueus = 3\n");
        let e = file_error(run(&f, &[]));
        assert!(
            e.contains("line 3") && e.contains("`qeueus`") && e.contains("no such option"),
            "{e}"
        );
        assert!(e.contains(&f.0.display().to_string()), "{e}");

        let f = file("# comment\nqueues = \"two\"\n");
        let e = file_error(run(&f, &[]));
        assert!(
            e.contains("line 2") && e.contains("`queues`") && e.contains("two"),
            "{e}"
        );

        let f = file("once = \"yes\"\n");
        assert!(file_error(run(&f, &[])).contains("takes true or false"));
        let f = file("queues = [1, 2]\n");
        assert!(file_error(run(&f, &[])).contains("not an array"));
        let f = file("config = \"/other\"\n");
        assert!(file_error(run(&f, &[])).contains("command line only"));
        let f = file("[tap]\nname = 1\n");
        assert!(file_error(run(&f, &[])).contains("not table"));
        let f = file("queues = = 2\n");
        let e = file_error(run(&f, &[]));
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let args = ["vhost-netmem", "--config", "/nonexistent/vnm.toml"];
        let e = file_error(parse(args.iter().map(OsString::from).collect()));
        assert!(e.contains("/nonexistent/vnm.toml"), "{e}");
    }

    #[test]
    fn later_checks_are_traced_to_the_line() {
        let f = file("socket = \"/s\"\n\nmac = \"01:00:00:00:00:01\"\n");
        let (c, origins) = cli(run(&f, &[]));
        let err = crate::config::NetConfig::from_cli(c)
            .unwrap_err()
            .to_string();
        let explained = origins.explain(&err);
        assert!(explained.contains("line 3, key `mac`"), "{explained}");
        // An option of a similar name is not blamed.
        assert_eq!(origins.explain("invalid --mac-x"), "invalid --mac-x");
    }
}
