//! Pre-deploy snapshots: named after the revision they guard, restored by a failed
//! gate, and kept per the policy (`rollback keep=N`), the rest deleted.

use std::time::Duration;

use incus_api::Client;

/// The prefix of every snapshot cul8er takes; others' snapshots are never touched.
pub const PREFIX: &str = "cul8er-";

/// The snapshot taken before `revision` changes an instance.
#[must_use]
pub fn name(revision: &str) -> String {
    // Incus snapshot names may not contain `/`; revision ids have none, and `.` and
    // `:` are allowed.
    format!("{PREFIX}{revision}")
}

/// Which of `existing` (snapshot names of one instance) to delete so that the newest
/// `keep` of cul8er's are left. Revision ids sort by time, so names sort too; other
/// snapshots are never chosen.
#[must_use]
pub fn to_prune(existing: &[String], keep: u32) -> Vec<String> {
    let mut ours: Vec<&String> = existing.iter().filter(|n| n.starts_with(PREFIX)).collect();
    ours.sort();
    let keep = usize::try_from(keep).unwrap_or(usize::MAX);
    let excess = ours.len().saturating_sub(keep);
    ours.into_iter().take(excess).cloned().collect()
}

/// A snapshot operation failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} snapshot {snapshot} of instance {instance}")]
pub struct SnapshotError {
    /// What was being done.
    pub what: &'static str,
    /// The instance.
    pub instance: String,
    /// The snapshot.
    pub snapshot: String,
    /// What Incus said.
    #[source]
    pub source: Box<incus_api::Error>,
}

async fn run(
    client: &Client,
    what: &'static str,
    instance: &str,
    snapshot: &str,
    timeout: Duration,
) -> Result<(), SnapshotError> {
    let fail = |source| SnapshotError {
        what,
        instance: instance.to_owned(),
        snapshot: snapshot.to_owned(),
        source: Box::new(source),
    };
    let snapshots = client.instances().snapshots(instance);
    let op = match what {
        "take" => snapshots.create(snapshot, false).await,
        "restore" => snapshots.restore(snapshot).await,
        _ => snapshots.delete(snapshot).await,
    }
    .map_err(fail)?;
    op.wait(timeout)
        .await
        .and_then(incus_api::Operation::into_success)
        .map_err(fail)?;
    Ok(())
}

/// Takes the snapshot `snapshot` of `instance` (without its memory). One already
/// there from an interrupted run of the same revision is kept.
///
/// # Errors
/// [`SnapshotError`] when Incus refuses.
pub async fn take(
    client: &Client,
    instance: &str,
    snapshot: &str,
    timeout: Duration,
) -> Result<(), SnapshotError> {
    match run(client, "take", instance, snapshot, timeout).await {
        Err(e) if e.source.is_conflict() => Ok(()),
        other => other,
    }
}

/// Restores `instance` to `snapshot`: its files and its configuration.
///
/// # Errors
/// [`SnapshotError`] when Incus refuses.
pub async fn restore(
    client: &Client,
    instance: &str,
    snapshot: &str,
    timeout: Duration,
) -> Result<(), SnapshotError> {
    run(client, "restore", instance, snapshot, timeout).await
}

/// Deletes cul8er's snapshots of `instance` beyond the newest `keep`; returns the
/// names deleted.
///
/// # Errors
/// [`SnapshotError`] when they cannot be listed or one cannot be deleted.
pub async fn prune(
    client: &Client,
    instance: &str,
    keep: u32,
    timeout: Duration,
) -> Result<Vec<String>, SnapshotError> {
    let existing: Vec<String> = client
        .instances()
        .snapshots(instance)
        .list()
        .await
        .map_err(|source| SnapshotError {
            what: "list",
            instance: instance.to_owned(),
            snapshot: "*".to_owned(),
            source: Box::new(source),
        })?
        .into_iter()
        .map(|s| s.name)
        .collect();
    let doomed = to_prune(&existing, keep);
    for snapshot in &doomed {
        run(client, "delete", instance, snapshot, timeout).await?;
    }
    Ok(doomed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keeps_the_newest_of_ours_and_never_touches_others() {
        let existing: Vec<String> = [
            "cul8er-20261126T050000.000Z",
            "manual-backup",
            "cul8er-20261124T010000.000Z",
            "cul8er-20261125T120000.000Z",
        ]
        .map(str::to_owned)
        .to_vec();
        assert_eq!(to_prune(&existing, 2), ["cul8er-20261124T010000.000Z"]);
        assert_eq!(to_prune(&existing, 0).len(), 3);
        assert!(to_prune(&existing, 3).is_empty());
        assert!(!to_prune(&existing, 0).contains(&"manual-backup".to_owned()));
    }

    #[test]
    fn snapshot_names_carry_the_revision() {
        assert_eq!(name("20261126T050000.000Z"), "cul8er-20261126T050000.000Z");
    }
}
