//! `cul8er remote add|list|remove`: the Incus servers a topology host can name.

use std::io::Read as _;

use cul8er_core::remote::{Remote, RemoteError, RemoteStore, RemoteTrust, TrustRemoval};

use crate::cli::{OutputFormat, RemoteAddArgs, RemoteCommand};
use crate::exit::Outcome;
use crate::output::{Settings, print_stdout};

/// Runs a `remote` subcommand.
pub(crate) fn run(command: &RemoteCommand, settings: &Settings) -> Outcome {
    let store = match RemoteStore::default_dir(|name| std::env::var_os(name)) {
        Ok(dir) => RemoteStore::new(dir),
        Err(e) => return failure(e),
    };
    match command {
        RemoteCommand::Add(args) => add(&store, args, settings),
        RemoteCommand::List => list(&store, settings),
        RemoteCommand::Remove { name } => remove(&store, name, settings),
    }
}

fn remove(store: &RemoteStore, name: &str, settings: &Settings) -> Outcome {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return Outcome::Unexpected(
                anyhow::Error::new(e).context("cannot start the async runtime"),
            );
        }
    };
    let (remote, trust) = match runtime.block_on(store.remove_revoking(name)) {
        Ok(removed) => removed,
        Err(e) => return failure(e),
    };
    if settings.format == OutputFormat::Json {
        return print_json(&serde_json::json!({ "removed": remote, "trust": trust }));
    }
    let what = match &trust {
        TrustRemoval::Revoked => {
            "The server no longer trusts cul8er's client certificate.".to_owned()
        }
        TrustRemoval::NotTrusted => {
            "The server did not trust cul8er's client certificate.".to_owned()
        }
        TrustRemoval::SharedWith { remote } => format!(
            "Remote {remote} reaches the same server, so it still trusts cul8er's client certificate."
        ),
        TrustRemoval::Unreachable { error } => {
            let fingerprint = store.client_identity().map_or_else(
                |_| "FINGERPRINT".to_owned(),
                |identity| identity.certificate().fingerprint(),
            );
            format!(
                "The server could not be asked to stop trusting cul8er's client certificate \
                 ({error}); remove it there with `incus config trust remove {fingerprint}`."
            )
        }
    };
    settings.eprint_line(&format!(
        "Removed remote {} ({}). {what}",
        remote.name, remote.address
    ));
    Outcome::Success
}

fn add(store: &RemoteStore, args: &RemoteAddArgs, settings: &Settings) -> Outcome {
    let trust = match (&args.token, &args.accept_fingerprint) {
        (Some(token), _) if token == "-" => {
            let mut token = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut token) {
                return Outcome::Unexpected(
                    anyhow::Error::new(e).context("cannot read the trust token from stdin"),
                );
            }
            RemoteTrust::Token(token.trim().to_owned())
        }
        (Some(token), _) => RemoteTrust::Token(token.clone()),
        (None, Some(fingerprint)) => RemoteTrust::Fingerprint(fingerprint.clone()),
        (None, None) => RemoteTrust::Unconfirmed,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return Outcome::Unexpected(
                anyhow::Error::new(e).context("cannot start the async runtime"),
            );
        }
    };
    match runtime.block_on(store.add(&args.name, &args.address, trust)) {
        Ok(remote) => {
            if settings.format == OutputFormat::Json {
                return print_json(&remote);
            }
            settings.eprint_line(&format!(
                "Server certificate SHA-256 fingerprint: {}\nAdded remote {} ({}); the certificate is pinned in {}.",
                remote.fingerprint,
                remote.name,
                remote.address,
                store.dir().display()
            ));
            Outcome::Success
        }
        Err(e) => failure(e),
    }
}

fn list(store: &RemoteStore, settings: &Settings) -> Outcome {
    let remotes = match store.list() {
        Ok(remotes) => remotes,
        Err(e) => return failure(e),
    };
    if settings.format == OutputFormat::Json {
        return print_json(&remotes);
    }
    if remotes.is_empty() {
        settings.eprint_line(
            "No remotes. Add one with `cul8er remote add NAME https://HOST:8443 --token TOKEN`.",
        );
        return Outcome::Success;
    }
    print_stdout(&table(&remotes));
    Outcome::Success
}

/// NAME, ADDRESS and FINGERPRINT columns.
fn table(remotes: &[Remote]) -> String {
    let name_width = remotes
        .iter()
        .map(|r| r.name.len())
        .chain([4])
        .max()
        .unwrap_or(4);
    let address_width = remotes
        .iter()
        .map(|r| r.address.len())
        .chain([7])
        .max()
        .unwrap_or(7);
    let mut out = format!(
        "{:name_width$}  {:address_width$}  FINGERPRINT\n",
        "NAME", "ADDRESS"
    );
    for r in remotes {
        out.push_str(&format!(
            "{:name_width$}  {:address_width$}  {}\n",
            r.name, r.address, r.fingerprint
        ));
    }
    out
}

fn print_json(value: &impl serde::Serialize) -> Outcome {
    match serde_json::to_string_pretty(value) {
        Ok(json) => {
            print_stdout(&format!("{json}\n"));
            Outcome::Success
        }
        Err(e) => Outcome::Unexpected(e.into()),
    }
}

fn failure(error: RemoteError) -> Outcome {
    if error.is_user_error() {
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        Outcome::UserReport(miette::miette!("{message}"))
    } else {
        Outcome::Unexpected(anyhow::Error::new(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_columns() {
        let remotes = [
            Remote {
                name: "a".into(),
                address: "https://127.0.0.1:8443".into(),
                fingerprint: "ff".into(),
            },
            Remote {
                name: "longer-name".into(),
                address: "https://h:1".into(),
                fingerprint: "00".into(),
            },
        ];
        let text = table(&remotes);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines[0], "NAME         ADDRESS                 FINGERPRINT");
        assert_eq!(lines[1], "a            https://127.0.0.1:8443  ff");
        assert_eq!(lines[2], "longer-name  https://h:1             00");
    }
}
