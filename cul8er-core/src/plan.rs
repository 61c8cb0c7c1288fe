//! The planner: (what the topology asks, what Incus holds) → a [`Plan`].
//!
//! Pure and deterministic: no I/O, changes sorted by host, kind and name, so the same
//! inputs give the same plan and its JSON (documented in `docs/plan-json.md`) is
//! stable. Each object gets one action — create, update in place (live, or saying a
//! restart is needed), replace, delete, keep, or none — with its field-level
//! `old → new` values.
//!
//! Drift is told apart from an intended change by the spec hash each instance carries
//! (`user.cul8er.spec`): when Incus holds the hash the topology gives, the topology
//! did not change, so any difference was made behind cul8er's back. A stopped
//! instance is drift too, and so is a release service stopped inside a running one
//! (a `service.APP` field, `stopped → running`: apply starts it through the init);
//! a service whose state could not be read is reported in the notes, not planned. A
//! replica is drift when it was deleted by hand: a gap below a replica that exists, or
//! one the edge still routes to.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::desired::{
    Desired, DesiredInstance, DesiredNetwork, DesiredVolume, KEY_CANDIDATE, KEY_IMAGE, KEY_RELEASE,
    KEY_REPLICA, KEY_RESOURCE, KEY_RETIRE, KEY_REVISION, KEY_SET, KEY_SPEC,
};
use crate::observe::{Observed, ObservedInstance};
use crate::release::{ReleaseHealth, ServiceState};
use crate::topology::{InstanceKind, StrategyKind};

/// The version of the plan's JSON layout.
pub const PLAN_FORMAT: u32 = 1;

/// What apply will do, object by object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// [`PLAN_FORMAT`].
    pub format: u32,
    /// The topology.
    pub topology: String,
    /// One entry per object, changed or not, sorted by host, kind and name.
    pub changes: Vec<Change>,
    /// What the plan says besides its changes (publishing that waits for the edge,
    /// volumes kept, limits not enforced).
    pub notes: Vec<String>,
    /// Counts by action.
    pub summary: Summary,
}

/// The kinds of objects a plan changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ObjectKind {
    /// A managed network.
    Network,
    /// A custom storage volume.
    Volume,
    /// An instance.
    Instance,
    /// A blue-green or canary resource's new instance set: created beside the
    /// serving set, then traffic is switched to it on the edge.
    Set,
    /// An edge's traffic configuration (listeners, services, backends, weights),
    /// applied after the instances it sends traffic to.
    Edge,
}

impl ObjectKind {
    /// The word used in output.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Network => "network",
            Self::Volume => "volume",
            Self::Instance => "instance",
            Self::Set => "set",
            Self::Edge => "edge",
        }
    }
}

/// What happens to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// It is made.
    Create,
    /// It is changed where it stands.
    Update,
    /// It is deleted and made again (image or type changed).
    Replace,
    /// It is deleted.
    Delete,
    /// It is no longer declared but kept (volumes, until `destroy --volumes`).
    Keep,
    /// Nothing to do.
    None,
}

impl Action {
    /// The sign shown in front of the object: `+`, `~`, `-/+`, `-`, `=` or a space.
    #[must_use]
    pub fn sign(self) -> &'static str {
        match self {
            Self::Create => "+",
            Self::Update => "~",
            Self::Replace => "-/+",
            Self::Delete => "-",
            Self::Keep => "=",
            Self::None => " ",
        }
    }

    /// The word used in output.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Replace => "replace",
            Self::Delete => "delete",
            Self::Keep => "keep",
            Self::None => "none",
        }
    }
}

/// One object's planned change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The host.
    pub host: String,
    /// What kind of object.
    pub kind: ObjectKind,
    /// Its Incus name.
    pub name: String,
    /// The resource, for instances.
    pub resource: Option<String>,
    /// What happens.
    pub action: Action,
    /// Whether the change puts back something altered behind cul8er's back.
    pub drift: bool,
    /// Whether an update needs the instance restarted.
    pub restart: bool,
    /// Whether the instance is stopped and will be started.
    pub start: bool,
    /// Why, in a few words, when the fields do not say it.
    pub reason: Option<String>,
    /// Field by field, `old → new`.
    pub fields: Vec<FieldChange>,
    /// What the object becomes (create, update, replace).
    pub target: Option<Target>,
}

impl Change {
    /// Whether apply has anything to do for it.
    #[must_use]
    pub fn is_change(&self) -> bool {
        !matches!(self.action, Action::None | Action::Keep)
    }

    /// The release service (app name) this instance update starts: one stopped or
    /// failed inside the running instance.
    #[must_use]
    pub fn service_to_start(&self) -> Option<&str> {
        self.fields
            .iter()
            .find_map(|f| f.field.strip_prefix(SERVICE_FIELD))
    }
}

/// The prefix of a release service's field: `service.APP`.
const SERVICE_FIELD: &str = "service.";

/// One field's change. `None` means absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    /// `config.KEY`, `devices.NAME`, `profiles`, `image`, `type`, `status`, or
    /// `service.APP` (a release service inside the instance).
    pub field: String,
    /// The value Incus holds.
    pub old: Option<String>,
    /// The value the topology asks for.
    pub new: Option<String>,
    /// Whether Incus applies it to a running instance without a restart.
    pub live: bool,
}

/// What an object becomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// A network.
    Network(DesiredNetwork),
    /// A volume.
    Volume(DesiredVolume),
    /// An instance.
    Instance(Box<DesiredInstance>),
    /// An edge's traffic configuration.
    Edge(Box<crate::edge::DesiredEdge>),
    /// A new instance set and its traffic switch.
    Set(Box<SetChange>),
}

/// What a set change does: a blue-green or canary resource's new version comes up
/// as a parallel set of instances beside the serving one, and the edge switches
/// traffic to it (at once, or by the canary's steps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetChange {
    /// `blue-green` or `canary`.
    pub strategy: StrategyKind,
    /// The new set's label (`g`, `b`, `c`, or `""` for the unsuffixed set).
    pub set: String,
    /// The serving set's label.
    pub serving_set: String,
    /// The serving set's instances, which retire after the switch.
    pub serving: Vec<String>,
    /// The new set's instances as they are created (names with the set's suffix).
    pub instances: Vec<DesiredInstance>,
    /// The new set exists already (an old set kept after the last switch, with the
    /// spec asked for): nothing is created, traffic switches back to it.
    #[serde(default)]
    pub reuse: bool,
}

/// Counts by action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Objects created.
    pub create: usize,
    /// Objects updated in place.
    pub update: usize,
    /// Objects replaced.
    pub replace: usize,
    /// Objects deleted.
    pub delete: usize,
    /// Objects kept although no longer declared.
    pub keep: usize,
    /// Objects left as they are.
    pub unchanged: usize,
    /// Changes that correct drift.
    pub drift: usize,
}

impl Plan {
    fn new(topology: String, mut changes: Vec<Change>, notes: Vec<String>) -> Self {
        changes.sort_by(|a, b| (&a.host, a.kind, &a.name).cmp(&(&b.host, b.kind, &b.name)));
        let mut summary = Summary::default();
        for change in &changes {
            match change.action {
                Action::Create => summary.create += 1,
                Action::Update => summary.update += 1,
                Action::Replace => summary.replace += 1,
                Action::Delete => summary.delete += 1,
                Action::Keep => summary.keep += 1,
                Action::None => summary.unchanged += 1,
            }
            if change.drift {
                summary.drift += 1;
            }
        }
        Self {
            format: PLAN_FORMAT,
            topology,
            changes,
            notes,
            summary,
        }
    }

    /// This plan while `rollout` is paused or interrupted: the set change of its
    /// resource and the deletion of its sets are left out (the planner would take
    /// its new set for a stray), and a note names the rollout and what to run.
    #[must_use]
    pub fn beside_rollout(self, rollout: &crate::rollout::pending::PendingRollout) -> Self {
        let members: BTreeSet<&str> = rollout
            .old_set
            .members
            .iter()
            .chain(&rollout.new_set.members)
            .map(|m| m.instance.as_str())
            .collect();
        let ours = |c: &Change| c.resource.as_deref() == Some(rollout.resource.as_str());
        let changes: Vec<Change> = self
            .changes
            .into_iter()
            .filter(|c| {
                !(ours(c)
                    && (c.kind == ObjectKind::Set
                        || (c.action == Action::Delete && members.contains(c.name.as_str()))))
            })
            .collect();
        let next = if rollout.phase == crate::rollout::pending::Phase::Switched {
            "`cul8er promote` finishes it"
        } else {
            "`cul8er promote` or `cul8er resume` goes on with it, `cul8er abort` undoes it"
        };
        let mut notes = self.notes;
        notes.push(format!(
            "{rollout}: its sets are left as they are and `cul8er apply` refuses until it ends; {next}"
        ));
        Self::new(self.topology, changes, notes)
    }

    /// A plan of nothing, for rollouts continued outside an apply.
    pub(crate) fn empty(topology: String) -> Self {
        Self::new(topology, Vec::new(), Vec::new())
    }

    /// Whether apply has anything to do.
    #[must_use]
    pub fn has_changes(&self) -> bool {
        self.changes.iter().any(Change::is_change)
    }

    /// The changes apply acts on.
    pub fn actionable(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| c.is_change())
    }

    /// The changes on which `self` and `other` disagree, as `host/kind/name`: empty
    /// when applying either does the same thing.
    #[must_use]
    pub fn differences(&self, other: &Plan) -> Vec<String> {
        let key = |c: &Change| format!("{}/{}/{}", c.host, c.kind.as_str(), c.name);
        let mine: BTreeMap<String, &Change> = self.actionable().map(|c| (key(c), c)).collect();
        let theirs: BTreeMap<String, &Change> = other.actionable().map(|c| (key(c), c)).collect();
        let keys: BTreeSet<&String> = mine.keys().chain(theirs.keys()).collect();
        keys.into_iter()
            .filter(|k| mine.get(*k) != theirs.get(*k))
            .cloned()
            .collect()
    }
}

/// Config keys Incus sets by itself, never compared.
fn ignored_key(key: &str) -> bool {
    key.starts_with("volatile.")
        || key.starts_with("image.")
        || key == KEY_REVISION
        || key == KEY_SPEC
}

/// Whether Incus applies a config key to a running instance.
fn live_key(kind: InstanceKind, key: &str) -> bool {
    if key.starts_with("user.") || key.starts_with("environment.") {
        return true;
    }
    kind == InstanceKind::Container && key.starts_with("limits.")
}

fn render_device(device: &BTreeMap<String, String>) -> String {
    device
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn instance_fields(desired: &DesiredInstance, observed: &ObservedInstance) -> Vec<FieldChange> {
    let mut fields = Vec::new();
    let keys: BTreeSet<&String> = desired
        .config
        .keys()
        .chain(observed.config.keys())
        .filter(|k| !ignored_key(k))
        .collect();
    for key in keys {
        let old = observed.config.get(key);
        let new = desired.config.get(key);
        if old != new {
            fields.push(FieldChange {
                field: format!("config.{key}"),
                old: old.cloned(),
                new: new.cloned(),
                live: live_key(desired.kind, key),
            });
        }
    }
    let names: BTreeSet<&String> = desired
        .devices
        .keys()
        .chain(observed.devices.keys())
        .collect();
    for name in names {
        let old = observed.devices.get(name);
        let new = desired.devices.get(name);
        if old != new {
            let proxy = [old, new]
                .into_iter()
                .flatten()
                .all(|d| d.get("type").map(String::as_str) == Some("proxy"));
            fields.push(FieldChange {
                field: format!("devices.{name}"),
                old: old.map(render_device),
                new: new.map(render_device),
                live: desired.kind == InstanceKind::Container || proxy,
            });
        }
    }
    if desired.profiles != observed.profiles {
        fields.push(FieldChange {
            field: "profiles".to_owned(),
            old: Some(observed.profiles.join(",")),
            new: Some(desired.profiles.join(",")),
            live: desired.kind == InstanceKind::Container,
        });
    }
    fields
}

fn plan_instance(
    desired: &DesiredInstance,
    observed: Option<&ObservedInstance>,
    service: Option<&ReleaseHealth>,
    gap: bool,
) -> Change {
    let mut change = Change {
        host: desired.host.clone(),
        kind: ObjectKind::Instance,
        name: desired.name.clone(),
        resource: Some(desired.resource.clone()),
        action: Action::None,
        drift: false,
        restart: false,
        start: false,
        reason: None,
        fields: Vec::new(),
        target: Some(Target::Instance(Box::new(desired.clone()))),
    };
    let Some(observed) = observed else {
        change.action = Action::Create;
        if gap {
            change.drift = true;
            change.reason = Some("deleted outside cul8er".to_owned());
        }
        return change;
    };
    let same_spec = observed.key(KEY_SPEC) == Some(desired.spec.as_str());
    let mut replace = Vec::new();
    if observed.instance_type != desired.kind.as_incus() {
        replace.push(FieldChange {
            field: "type".to_owned(),
            old: Some(observed.instance_type.clone()),
            new: Some(desired.kind.as_incus().to_owned()),
            live: false,
        });
    }
    let image = desired.image.to_string();
    if let Some(old) = observed.key(KEY_IMAGE)
        && old != image
    {
        replace.push(FieldChange {
            field: "image".to_owned(),
            old: Some(old.to_owned()),
            new: Some(image),
            live: false,
        });
    }
    let fields = instance_fields(desired, observed);
    if !replace.is_empty() {
        change.action = Action::Replace;
        change.fields = replace;
        change.fields.extend(
            fields
                .into_iter()
                .filter(|f| f.field != format!("config.{KEY_IMAGE}")),
        );
        change.drift = same_spec;
        return change;
    }
    change.fields = fields;
    if !observed.is_running() {
        change.start = true;
        change.drift = true;
        change.fields.push(FieldChange {
            field: "status".to_owned(),
            old: Some(observed.status.clone()),
            new: Some("Running".to_owned()),
            live: true,
        });
    }
    if !same_spec && change.fields.is_empty() {
        // Only what Incus cannot show differs: the release's definition or the
        // environment.
        change.fields.push(FieldChange {
            field: format!("config.{KEY_SPEC}"),
            old: observed.key(KEY_SPEC).map(str::to_owned),
            new: Some(desired.spec.clone()),
            live: true,
        });
        change.reason = Some("release definition or environment changed".to_owned());
    }
    // After the spec: a service to start must not hide a release to deploy.
    if let Some(service) = service.filter(|s| {
        observed.is_running() && matches!(s.state, ServiceState::Stopped | ServiceState::Failed)
    }) {
        change.drift = true;
        change.fields.push(FieldChange {
            field: format!("{SERVICE_FIELD}{}", service.app),
            old: Some(service.state.as_str().to_owned()),
            new: Some(ServiceState::Running.as_str().to_owned()),
            live: true,
        });
        let how = if service.state == ServiceState::Failed {
            "has failed"
        } else {
            "is stopped"
        };
        change
            .reason
            .get_or_insert_with(|| format!("service {} {how}: start it", service.app));
    }
    if !change.fields.is_empty() {
        change.action = Action::Update;
        change.restart = change.fields.iter().any(|f| !f.live);
        if same_spec {
            change.drift = true;
        }
    }
    change
}

/// Plans the changes that make Incus hold what `desired` asks for.
///
/// Instances of blue-green and canary resources are matched by (host, resource,
/// replica) within the set that serves, whatever its name suffix; a change of their
/// spec becomes one [`ObjectKind::Set`] change for the resource (drift on one
/// instance stays an in-place fix). Old sets kept after a switch are kept until their
/// `user.cul8er.retire-after` time, then deleted; a candidate set left by an
/// interrupted rollout is deleted.
#[must_use]
pub fn plan(desired: &Desired, observed: &Observed) -> Plan {
    let sets = SetState::read(desired, observed);
    let resolved = sets.resolve(desired);
    let desired = &resolved;
    let mut changes = Vec::new();
    let mut notes = desired.notes.clone();
    let empty = crate::observe::ObservedHost::default();
    // Indexes of what each host holds, so that planning stays linear in size.
    let mut by_name: BTreeMap<(&str, &str), &ObservedInstance> = BTreeMap::new();
    let mut highest_replica: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    for (host, state) in &observed.hosts {
        for instance in &state.instances {
            by_name.insert((host, &instance.name), instance);
            if let (Some(resource), Some(replica)) = (
                instance.key(KEY_RESOURCE),
                instance
                    .key(KEY_REPLICA)
                    .and_then(|r| r.parse::<u32>().ok()),
            ) {
                let highest = highest_replica.entry((host, resource)).or_default();
                *highest = (*highest).max(replica);
            }
        }
    }
    // The instances each edge routes to: only an apply that made them puts them there,
    // and a deletion by hand leaves them, so the edge still names them.
    let mut routed: BTreeSet<(&str, &str)> = BTreeSet::new();
    for (host, state) in &observed.hosts {
        if let Some(config) = state.edge.as_ref().and_then(|e| e.config.as_ref()) {
            for backend in config.services.iter().flat_map(|s| &s.backends) {
                routed.insert((host, &backend.name));
            }
        }
    }
    let mut desired_instances: BTreeSet<(&str, &str)> = BTreeSet::new();
    for instance in &desired.instances {
        desired_instances.insert((&instance.host, &instance.name));
        let found = by_name
            .get(&(instance.host.as_str(), instance.name.as_str()))
            .copied();
        // A missing replica below one that exists, or one the edge routes to, was
        // deleted behind cul8er's back (the last replica has none above it).
        let gap = found.is_none()
            && (highest_replica
                .get(&(instance.host.as_str(), instance.resource.as_str()))
                .is_some_and(|&highest| highest > instance.replica)
                || routed.contains(&(instance.host.as_str(), instance.name.as_str())));
        let service = found.and_then(|_| {
            observed
                .hosts
                .get(&instance.host)?
                .services
                .get(&instance.name)
        });
        if let Some(unread) = service.filter(|s| s.state == ServiceState::Unknown) {
            notes.push(format!(
                "service {} on instance {} (host {}) could not be read ({}): left out of the plan; `cul8er status` shows it",
                unread.app,
                instance.name,
                instance.host,
                unread.detail.as_deref().unwrap_or("no reason given")
            ));
        }
        changes.push(plan_instance(instance, found, service, gap));
    }
    for (host, state) in &observed.hosts {
        for instance in &state.instances {
            if !desired_instances.contains(&(host.as_str(), instance.name.as_str()))
                && !sets.is_other_set(host, instance)
            {
                changes.push(delete(
                    host,
                    ObjectKind::Instance,
                    &instance.name,
                    instance.key(KEY_RESOURCE),
                ));
            }
        }
    }
    let mut desired = std::borrow::Cow::Borrowed(desired);
    sets.plan(&mut desired, &mut changes);
    let desired = desired.as_ref();

    let mut desired_networks: BTreeSet<(&str, &str)> = BTreeSet::new();
    for network in &desired.networks {
        desired_networks.insert((&network.host, &network.name));
        let host = observed.hosts.get(&network.host).unwrap_or(&empty);
        let found = host.networks.iter().find(|n| n.name == network.name);
        let mut change = Change {
            host: network.host.clone(),
            kind: ObjectKind::Network,
            name: network.name.clone(),
            resource: None,
            action: Action::None,
            drift: false,
            restart: false,
            start: false,
            reason: None,
            fields: Vec::new(),
            target: None,
        };
        match (found, network.owned) {
            (None, true) => {
                change.action = Action::Create;
                change.target = Some(Target::Network(network.clone()));
            }
            (None, false) => notes.push(format!(
                "network {} does not exist on host {}: create it, or declare it as a bridge the topology owns",
                network.name, network.host
            )),
            (Some(_), false) => {}
            (Some(found), true) => {
                for (key, new) in &network.config {
                    let old = found.config.get(key);
                    // `auto` becomes a concrete subnet once Incus picks one.
                    if old != Some(new) && !(new == "auto" && old.is_some()) {
                        change.fields.push(FieldChange {
                            field: format!("config.{key}"),
                            old: old.cloned(),
                            new: Some(new.clone()),
                            live: true,
                        });
                    }
                }
                if !change.fields.is_empty() {
                    change.action = Action::Update;
                    change.target = Some(Target::Network(network.clone()));
                }
            }
        }
        changes.push(change);
    }
    for (host, state) in &observed.hosts {
        for network in &state.networks {
            let ours = network.config.get(crate::desired::KEY_TOPOLOGY) == Some(&observed.topology);
            if ours && !desired_networks.contains(&(host.as_str(), network.name.as_str())) {
                changes.push(delete(host, ObjectKind::Network, &network.name, None));
            }
        }
    }

    let mut desired_volumes: BTreeSet<(&str, &str, &str)> = BTreeSet::new();
    for volume in &desired.volumes {
        desired_volumes.insert((&volume.host, &volume.pool, &volume.name));
        let host = observed.hosts.get(&volume.host).unwrap_or(&empty);
        let found = host
            .volumes
            .iter()
            .find(|v| v.name == volume.name && v.pool == volume.pool);
        let mut change = Change {
            host: volume.host.clone(),
            kind: ObjectKind::Volume,
            name: volume.name.clone(),
            resource: None,
            action: Action::None,
            drift: false,
            restart: false,
            start: false,
            reason: None,
            fields: Vec::new(),
            target: None,
        };
        match found {
            None => {
                change.action = Action::Create;
                change.target = Some(Target::Volume(volume.clone()));
            }
            Some(found) => {
                for (key, new) in &volume.config {
                    let old = found.config.get(key);
                    if old != Some(new) {
                        change.fields.push(FieldChange {
                            field: format!("config.{key}"),
                            old: old.cloned(),
                            new: Some(new.clone()),
                            live: true,
                        });
                    }
                }
                if !change.fields.is_empty() {
                    change.action = Action::Update;
                    change.target = Some(Target::Volume(volume.clone()));
                }
            }
        }
        changes.push(change);
    }
    for (host, state) in &observed.hosts {
        for volume in &state.volumes {
            let ours = volume.config.get(crate::desired::KEY_TOPOLOGY) == Some(&observed.topology);
            if ours
                && !desired_volumes.contains(&(
                    host.as_str(),
                    volume.pool.as_str(),
                    volume.name.as_str(),
                ))
            {
                let mut change = delete(host, ObjectKind::Volume, &volume.name, None);
                change.action = Action::Keep;
                change.reason = Some(
                    "no longer declared; volumes are deleted only by `destroy --volumes`"
                        .to_owned(),
                );
                changes.push(change);
            }
        }
    }
    let (edges, edge_notes) = crate::edge::plan_edges(desired, observed);
    changes.extend(edges);
    notes.extend(edge_notes);
    Plan::new(desired.topology.clone(), changes, notes)
}

fn delete(host: &str, kind: ObjectKind, name: &str, resource: Option<&str>) -> Change {
    Change {
        host: host.to_owned(),
        kind,
        name: name.to_owned(),
        resource: resource.map(str::to_owned),
        action: Action::Delete,
        drift: false,
        restart: false,
        start: false,
        reason: Some(match kind {
            ObjectKind::Instance if resource.is_some() => "no longer in the topology".to_owned(),
            _ => "no longer declared".to_owned(),
        }),
        fields: Vec::new(),
        target: None,
    }
}

/// Plans the removal of everything the topology has in Incus: instances, owned
/// networks, and its volumes only when `volumes` is set (otherwise they are kept).
#[must_use]
pub fn plan_destroy(observed: &Observed, volumes: bool) -> Plan {
    let mut changes = Vec::new();
    let mut notes = Vec::new();
    for (host, state) in &observed.hosts {
        for instance in &state.instances {
            let mut change = delete(
                host,
                ObjectKind::Instance,
                &instance.name,
                instance.key(KEY_RESOURCE),
            );
            change.reason = Some("destroy".to_owned());
            changes.push(change);
        }
        for network in &state.networks {
            if network.config.get(crate::desired::KEY_TOPOLOGY) == Some(&observed.topology) {
                let mut change = delete(host, ObjectKind::Network, &network.name, None);
                change.reason = Some("destroy".to_owned());
                changes.push(change);
            }
        }
        for volume in &state.volumes {
            if volume.config.get(crate::desired::KEY_TOPOLOGY) != Some(&observed.topology) {
                continue;
            }
            let mut change = delete(host, ObjectKind::Volume, &volume.name, None);
            change.target = Some(Target::Volume(DesiredVolume {
                host: host.clone(),
                pool: volume.pool.clone(),
                name: volume.name.clone(),
                config: BTreeMap::new(),
            }));
            if volumes {
                change.reason = Some("destroy --volumes".to_owned());
            } else {
                change.action = Action::Keep;
                change.reason = Some("volumes are deleted only with `--volumes`".to_owned());
            }
            changes.push(change);
        }
    }
    if !volumes && changes.iter().any(|c| c.action == Action::Keep) {
        notes.push("volumes are kept; `destroy --volumes` deletes them".to_owned());
    }
    Plan::new(observed.topology.clone(), changes, notes)
}

fn quoted(value: Option<&String>) -> String {
    value.map_or_else(|| "(none)".to_owned(), |v| format!("{v:?}"))
}

/// The plan as people read it, like `terraform plan`: one line per changed object
/// with its sign (`+ ~ -/+ - =`), its fields `old → new` below it, the notes, and a
/// summary line. Plain text: the CLI adds colour by the leading sign.
impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut host = None;
        for change in self.changes.iter().filter(|c| c.action != Action::None) {
            if host != Some(&change.host) {
                writeln!(f, "host {}:", change.host)?;
                host = Some(&change.host);
            }
            let mut line = format!(
                "  {} {} {}",
                change.action.sign(),
                change.kind.as_str(),
                change.name
            );
            if let Some(resource) = &change.resource {
                line.push_str(&format!(" ({resource})"));
            }
            let mut tags = Vec::new();
            if change.drift {
                tags.push("drift".to_owned());
            }
            if change.action == Action::Update {
                tags.push(if change.restart {
                    "restart needed".to_owned()
                } else {
                    "live".to_owned()
                });
            }
            if let Some(reason) = &change.reason {
                tags.push(reason.clone());
            }
            if !tags.is_empty() {
                line.push_str(&format!("  [{}]", tags.join(", ")));
            }
            writeln!(f, "{line}")?;
            for field in &change.fields {
                let sign = match (&field.old, &field.new) {
                    (None, Some(_)) => "+",
                    (Some(_), None) => "-",
                    _ => "~",
                };
                writeln!(
                    f,
                    "      {sign} {}: {} → {}",
                    field.field,
                    quoted(field.old.as_ref()),
                    quoted(field.new.as_ref())
                )?;
            }
        }
        if !self.notes.is_empty() {
            writeln!(f, "notes:")?;
            for note in &self.notes {
                writeln!(f, "  * {note}")?;
            }
        }
        let s = &self.summary;
        if self.has_changes() {
            write!(
                f,
                "Plan: {} to create, {} to update, {} to replace, {} to delete",
                s.create, s.update, s.replace, s.delete
            )?;
            if s.drift > 0 {
                write!(f, " ({} correcting drift)", s.drift)?;
            }
            writeln!(f, ".")
        } else {
            writeln!(
                f,
                "No changes: Incus matches topology {} ({} objects).",
                self.topology,
                s.unchanged + s.keep
            )
        }
    }
}

/// A Unix time as `YYYYMMDDTHHMMSSZ` (UTC).
fn utc(secs: u64) -> String {
    let id = crate::lock::revision_id(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
    id.replace(".000Z", "Z")
}

/// The instance sets of one blue-green or canary resource on one host.
#[derive(Debug)]
struct ResourceSets<'o> {
    strategy: StrategyKind,
    /// The label of the set that serves (`""` before the first switch).
    serving: String,
    /// The serving set's instances.
    serving_instances: Vec<&'o ObservedInstance>,
    /// Old sets kept after a switch, until their retire-after time.
    retiring: Vec<&'o ObservedInstance>,
    /// Sets never switched to: left by an interrupted rollout, or strays.
    candidates: Vec<&'o ObservedInstance>,
}

/// The sets of every blue-green and canary resource, as Incus holds them.
#[derive(Debug)]
struct SetState<'o> {
    topology: String,
    /// By (host, resource).
    resources: BTreeMap<(String, String), ResourceSets<'o>>,
    /// When each host was read.
    read_at: BTreeMap<String, u64>,
}

fn set_of(instance: &ObservedInstance) -> &str {
    instance.key(KEY_SET).unwrap_or_default()
}

fn retire_after(instance: &ObservedInstance) -> Option<u64> {
    instance.key(KEY_RETIRE).and_then(|t| t.parse().ok())
}

/// The label of the only set of `held` with weight on the edge of `host`, when
/// exactly one has any.
fn weighted_set<'o>(
    observed: &'o Observed,
    host: &str,
    held: &[&'o ObservedInstance],
) -> Option<&'o str> {
    let config = observed.hosts.get(host)?.edge.as_ref()?.config.as_ref()?;
    let weight = |name: &str| -> u64 {
        config
            .services
            .iter()
            .flat_map(|s| &s.backends)
            .filter(|b| b.name == name)
            .map(|b| u64::from(b.weight))
            .sum()
    };
    let mut labels: Vec<&str> = held
        .iter()
        .filter(|i| weight(&i.name) > 0)
        .map(|i| set_of(i))
        .collect();
    labels.sort_unstable();
    labels.dedup();
    match labels.as_slice() {
        [label] => Some(label),
        _ => None,
    }
}

impl<'o> SetState<'o> {
    fn read(desired: &Desired, observed: &'o Observed) -> Self {
        let mut resources = BTreeMap::new();
        for instance in &desired.instances {
            let Some(strategy) = instance.switch else {
                continue;
            };
            let key = (instance.host.clone(), instance.resource.clone());
            if resources.contains_key(&key) {
                continue;
            }
            let held: Vec<&ObservedInstance> = observed
                .hosts
                .get(&instance.host)
                .map(|h| {
                    h.instances
                        .iter()
                        .filter(|i| i.key(KEY_RESOURCE) == Some(instance.resource.as_str()))
                        .collect()
                })
                .unwrap_or_default();
            let mut sets = ResourceSets {
                strategy,
                serving: String::new(),
                serving_instances: Vec::new(),
                retiring: Vec::new(),
                candidates: Vec::new(),
            };
            // The keys are set after the edge switched; when they did not land (a
            // rollout killed or failing right after the switch), the edge says which
            // set serves: the only one with weight.
            let weighted = weighted_set(observed, &instance.host, &held);
            let mut by_label: BTreeMap<&str, Vec<&ObservedInstance>> = BTreeMap::new();
            for found in held {
                if weighted.is_some_and(|label| label == set_of(found)) {
                    by_label.entry(set_of(found)).or_default().push(found);
                } else if weighted.is_some() && found.key(KEY_CANDIDATE).is_none() {
                    // Switched away from without its retire-after key: an old set.
                    sets.retiring.push(found);
                } else if found.key(KEY_CANDIDATE).is_some() {
                    sets.candidates.push(found);
                } else if found.key(KEY_RETIRE).is_some() {
                    sets.retiring.push(found);
                } else {
                    by_label.entry(set_of(found)).or_default().push(found);
                }
            }
            // The set with the most instances serves (the unsuffixed one on a tie);
            // any other set without a key is a stray and goes.
            let serving = by_label
                .iter()
                .max_by(|a, b| a.1.len().cmp(&b.1.len()).then(b.0.cmp(a.0)))
                .map(|(label, _)| (*label).to_owned())
                .unwrap_or_default();
            for (label, found) in by_label {
                if label == serving {
                    sets.serving_instances = found;
                } else {
                    sets.candidates.extend(found);
                }
            }
            sets.serving = serving;
            resources.insert(key, sets);
        }
        Self {
            topology: desired.topology.clone(),
            resources,
            read_at: observed
                .hosts
                .iter()
                .map(|(h, s)| (h.clone(), s.read_at))
                .collect(),
        }
    }

    /// `desired` with each blue-green and canary instance named after its serving
    /// set, in the instances and in the edge's backends.
    fn resolve(&self, desired: &Desired) -> Desired {
        let mut resolved = desired.clone();
        let mut renamed: BTreeMap<(String, String), String> = BTreeMap::new();
        for instance in &mut resolved.instances {
            let Some(sets) = self
                .resources
                .get(&(instance.host.clone(), instance.resource.clone()))
            else {
                continue;
            };
            if sets.serving.is_empty() {
                continue;
            }
            let name = crate::topology::names::set_instance_name(
                &desired.topology,
                &instance.resource,
                instance.replica,
                &sets.serving,
            );
            renamed.insert((instance.host.clone(), instance.name.clone()), name.clone());
            instance.name = name;
            instance
                .config
                .insert(KEY_SET.to_owned(), sets.serving.clone());
        }
        for instance in &mut resolved.instances {
            let Some(edge) = instance.edge.as_deref_mut() else {
                continue;
            };
            for service in &mut edge.services {
                for backend in &mut service.backends {
                    if let Some(name) = renamed.get(&(edge.host.clone(), backend.instance.clone()))
                    {
                        backend.instance.clone_from(name);
                    }
                }
            }
        }
        resolved
            .instances
            .sort_by(|a, b| (&a.host, &a.name).cmp(&(&b.host, &b.name)));
        resolved
    }

    /// Whether `instance` belongs to a set other than the serving one (planned by
    /// [`SetState::plan`], not as an instance no longer in the topology).
    fn is_other_set(&self, host: &str, instance: &ObservedInstance) -> bool {
        instance.key(KEY_RESOURCE).is_some_and(|resource| {
            self.resources
                .get(&(host.to_owned(), resource.to_owned()))
                .is_some_and(|sets| {
                    sets.retiring.iter().any(|i| i.name == instance.name)
                        || sets.candidates.iter().any(|i| i.name == instance.name)
                })
        })
    }

    /// Turns the instance changes of each resource whose spec changed into one set
    /// change, and plans the other sets: candidates deleted, old sets kept (at weight
    /// 0 on the edge) until their time, then deleted.
    fn plan(&self, desired: &mut std::borrow::Cow<'_, Desired>, changes: &mut Vec<Change>) {
        for ((host, resource), sets) in &self.resources {
            let now = self.read_at.get(host).copied().unwrap_or(0);
            let wanted: Vec<DesiredInstance> = desired
                .instances
                .iter()
                .filter(|i| &i.host == host && &i.resource == resource)
                .cloned()
                .collect();
            let of_resource = |c: &Change| {
                c.kind == ObjectKind::Instance
                    && &c.host == host
                    && c.resource.as_deref() == Some(resource.as_str())
            };
            // The topology changed the spec (not drift on one instance).
            let spec_changed = wanted.iter().any(|d| {
                sets.serving_instances
                    .iter()
                    .find(|o| o.name == d.name)
                    .is_some_and(|o| o.key(KEY_SPEC) != Some(d.spec.as_str()))
            });
            let mut kept: Vec<&ObservedInstance> = Vec::new();
            let mut set_label: Option<&str> = None;
            if spec_changed {
                let reuse = self.reusable(sets, &wanted);
                let label = reuse.unwrap_or_else(|| {
                    crate::topology::names::next_set(
                        sets.strategy == StrategyKind::Canary,
                        &sets.serving,
                    )
                });
                set_label = Some(label);
                let removed: Vec<Change> = {
                    let (removed, rest): (Vec<Change>, Vec<Change>) = std::mem::take(changes)
                        .into_iter()
                        .partition(|c| of_resource(c) && c.action != Action::Delete);
                    *changes = rest;
                    removed
                };
                // What serves now is what Incus holds, not what the topology names:
                // a replica added with the new version (or deleted by hand) comes up
                // only in the new set, and the edge gets no backend for it before.
                let deleted: BTreeSet<&str> = changes
                    .iter()
                    .filter(|c| of_resource(c) && c.action == Action::Delete)
                    .map(|c| c.name.as_str())
                    .collect();
                let mut serving: Vec<String> = sets
                    .serving_instances
                    .iter()
                    .map(|i| i.name.clone())
                    .filter(|n| !deleted.contains(n.as_str()))
                    .collect();
                serving.sort_unstable();
                let missing: Vec<&str> = wanted
                    .iter()
                    .map(|d| d.name.as_str())
                    .filter(|n| !serving.iter().any(|s| s == n))
                    .collect();
                if !missing.is_empty() {
                    drop_backends(desired.to_mut(), host, resource, &missing);
                }
                changes.push(self.set_change(
                    host,
                    resource,
                    sets,
                    label,
                    reuse.is_some(),
                    &wanted,
                    serving,
                    &removed,
                ));
            }
            for instance in &sets.candidates {
                let mut change = delete(host, ObjectKind::Instance, &instance.name, Some(resource));
                change.reason = Some(format!(
                    "a set of {resource} never switched to (left by an interrupted rollout)"
                ));
                changes.push(change);
            }
            for instance in &sets.retiring {
                let label = set_of(instance);
                let mut change = delete(host, ObjectKind::Instance, &instance.name, Some(resource));
                let until = retire_after(instance).unwrap_or(0);
                if set_label == Some(label) {
                    let reuse = changes.iter().any(|c| {
                        matches!(&c.target, Some(Target::Set(s)) if s.reuse && s.set == label && &c.host == host)
                    });
                    if reuse {
                        kept.push(instance);
                        continue;
                    }
                    change.reason = Some(format!(
                        "an old set of {resource}, making room for the new set"
                    ));
                } else if retire_after(instance).is_none() {
                    change.reason = Some(format!(
                        "an old set of {resource}, switched away from on the edge"
                    ));
                } else if now != 0 && until <= now {
                    change.reason = Some(format!(
                        "the old set of {resource}: its scale-down delay ended at {}",
                        utc(until)
                    ));
                } else {
                    change.action = Action::Keep;
                    change.reason = Some(format!(
                        "the old set of {resource}, kept at weight 0 until {} so that `cul8er rollback` switches back at once",
                        utc(until)
                    ));
                    kept.push(instance);
                }
                changes.push(change);
            }
            if !kept.is_empty() {
                add_standby_backends(desired.to_mut(), host, resource, &kept);
            }
        }
    }

    /// The label of an old set that still holds every replica with the spec wanted.
    fn reusable(
        &self,
        sets: &ResourceSets<'o>,
        wanted: &[DesiredInstance],
    ) -> Option<&'static str> {
        ["", "b", "g", "c"].into_iter().find(|label| {
            *label != sets.serving
                && !wanted.is_empty()
                && wanted.iter().all(|d| {
                    let name = crate::topology::names::set_instance_name(
                        &self.topology,
                        &d.resource,
                        d.replica,
                        label,
                    );
                    sets.retiring.iter().any(|i| {
                        i.name == name && i.is_running() && i.key(KEY_SPEC) == Some(d.spec.as_str())
                    })
                })
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn set_change(
        &self,
        host: &str,
        resource: &str,
        sets: &ResourceSets<'o>,
        label: &str,
        reuse: bool,
        wanted: &[DesiredInstance],
        serving: Vec<String>,
        removed: &[Change],
    ) -> Change {
        let instances: Vec<DesiredInstance> = wanted
            .iter()
            .map(|d| {
                let mut instance = d.clone();
                instance.name = crate::topology::names::set_instance_name(
                    &self.topology,
                    resource,
                    d.replica,
                    label,
                );
                if label.is_empty() {
                    instance.config.remove(KEY_SET);
                } else {
                    instance.config.insert(KEY_SET.to_owned(), label.to_owned());
                }
                if !reuse {
                    instance
                        .config
                        .insert(KEY_CANDIDATE.to_owned(), "true".to_owned());
                }
                instance
            })
            .collect();
        let suffix = if label.is_empty() {
            "unsuffixed".to_owned()
        } else {
            format!("-{label}")
        };
        let version = wanted
            .first()
            .and_then(|d| d.config.get(KEY_RELEASE))
            .map_or(String::new(), |v| format!(", version {v}"));
        let count = instances.len();
        let reason = match (sets.strategy, reuse) {
            (_, true) => format!(
                "switch back to the old set {suffix} ({count} instances{version}), kept since the last switch"
            ),
            (StrategyKind::Canary, false) => format!(
                "canary set {suffix} ({count} instances{version}) beside the stable set; traffic moves by the canary's steps; the old set is removed at 100%"
            ),
            _ => format!(
                "new set {suffix} ({count} instances{version}) beside the serving set; switch; the old set is removed after the scale-down delay"
            ),
        };
        let mut fields: Vec<FieldChange> = removed
            .iter()
            .find(|c| matches!(c.action, Action::Update | Action::Replace))
            .map(|c| {
                c.fields
                    .iter()
                    .filter(|f| {
                        f.field != "status"
                            && f.field != format!("config.{KEY_SPEC}")
                            && !f.field.starts_with(SERVICE_FIELD)
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        fields.push(FieldChange {
            field: "instances".to_owned(),
            old: Some(serving.join(",")),
            new: Some(
                instances
                    .iter()
                    .map(|i| i.name.clone())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            live: true,
        });
        let name = if label.is_empty() {
            format!("{}-{resource}", self.topology)
        } else {
            format!("{}-{resource}-{label}", self.topology)
        };
        Change {
            host: host.to_owned(),
            kind: ObjectKind::Set,
            name,
            resource: Some(resource.to_owned()),
            action: Action::Replace,
            drift: false,
            restart: false,
            start: false,
            reason: Some(reason),
            fields,
            target: Some(Target::Set(Box::new(SetChange {
                strategy: sets.strategy,
                set: label.to_owned(),
                serving_set: sets.serving.clone(),
                serving,
                instances,
                reuse,
            }))),
        }
    }
}

/// Adds `kept` (old sets) to the edge services of `resource` at weight 0.
/// `desired` without the edge backends of `resource` named `names`.
fn drop_backends(desired: &mut Desired, host: &str, resource: &str, names: &[&str]) {
    for instance in &mut desired.instances {
        let Some(edge) = instance.edge.as_deref_mut() else {
            continue;
        };
        if edge.host != host {
            continue;
        }
        for service in edge.services.iter_mut().filter(|s| s.resource == resource) {
            service
                .backends
                .retain(|b| !names.contains(&b.instance.as_str()));
        }
    }
}

fn add_standby_backends(
    desired: &mut Desired,
    host: &str,
    resource: &str,
    kept: &[&ObservedInstance],
) {
    let mut names: Vec<&str> = kept.iter().map(|i| i.name.as_str()).collect();
    names.sort_unstable();
    for instance in &mut desired.instances {
        let Some(edge) = instance.edge.as_deref_mut() else {
            continue;
        };
        if edge.host != host {
            continue;
        }
        for service in edge.services.iter_mut().filter(|s| s.resource == resource) {
            for name in &names {
                if !service.backends.iter().any(|b| b.instance == *name) {
                    service.backends.push(crate::edge::EdgeBackend {
                        instance: (*name).to_owned(),
                        weight: 0,
                    });
                }
            }
        }
    }
}
