//! The shell scripts and service definitions a release puts into an instance.
//!
//! Everything here is pure text generation, so it is unit-tested without Incus. The
//! scripts run through the Incus exec API with `sh -c SCRIPT cul8er ARGS...`; every
//! value from the topology reaches them as a positional argument or single-quoted with
//! [`quote`], never spliced into the script unquoted. They are POSIX sh and use only
//! what busybox and a Debian minbase both have.

use super::InitSystem;

/// `PATH` for commands run inside instances (Incus would add its own only when absent).
pub(super) const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Quotes `value` for POSIX sh (and for systemd environment files, which read
/// single-quoted values and `\'` the same way).
pub(super) fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Where one app lives inside an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Layout {
    /// `/opt/<app>`.
    pub base: String,
    /// The init's service name: `cul8er-<app>`.
    pub service: String,
    /// `/run/cul8er-<app>`: pid and start count, written by the run script.
    pub rundir: String,
    /// `/var/log/cul8er-<app>.log` (busybox and OpenRC; systemd uses the journal).
    pub log: String,
}

impl Layout {
    pub(super) fn new(app: &str) -> Self {
        Self {
            base: format!("/opt/{app}"),
            service: format!("cul8er-{app}"),
            rundir: format!("/run/cul8er-{app}"),
            log: format!("/var/log/cul8er-{app}.log"),
        }
    }

    /// The cul8er state directory of the app (root only): deploy marker, uploads.
    pub(super) fn state(&self) -> String {
        format!("{}/.cul8er", self.base)
    }

    /// Where an artifact is uploaded before it is moved into `releases/`.
    pub(super) fn upload(&self) -> String {
        format!("{}/.cul8er/upload", self.base)
    }

    pub(super) fn env_file(&self) -> String {
        format!("{}/env", self.base)
    }

    pub(super) fn run_script(&self) -> String {
        format!("{}/run", self.base)
    }

    /// The service definition's path for `init`.
    pub(super) fn service_file(&self, init: InitSystem) -> String {
        match init {
            InitSystem::Systemd => format!("/etc/systemd/system/{}.service", self.service),
            InitSystem::Openrc => format!("/etc/init.d/{}", self.service),
            InitSystem::Busybox => format!("/etc/service.d/{}", self.service),
        }
    }
}

/// Detects the init system; sets `init` to `systemd`, `openrc`, `busybox` or `unknown`.
const DETECT_INIT: &str = r#"
if [ -d /run/systemd/system ]; then
    init=systemd
elif [ -x /sbin/openrc-run ] || [ -x /usr/sbin/openrc-run ] || [ -x /usr/bin/openrc-run ]; then
    init=openrc
elif readlink /proc/1/exe 2>/dev/null | grep -q busybox ||
    { [ -f /etc/inittab ] && readlink /sbin/init 2>/dev/null | grep -q busybox; }; then
    init=busybox
else
    init=unknown
fi
"#;

/// Waits (up to 30 s) until the init found in `$init` can be asked to manage a
/// service, in an instance that has just started:
/// - systemd makes `/run/systemd/system` before its control socket, and `systemctl`
///   fails ("Failed to connect to bus") until `/run/systemd/private` exists;
/// - OpenRC's boot (sysinit, boot) resets its record of started services: a service
///   started before it reached its runlevel would run unrecorded, so that
///   `rc-service stop` leaves it running.
const WAIT_FOR_INIT: &str = r#"if [ "$init" = systemd ]; then
    tenths=0
    while [ ! -S /run/systemd/private ] && [ "$tenths" -lt 300 ]; do
        sleep 0.1
        tenths=$((tenths + 1))
    done
fi
if [ "$init" = openrc ]; then
    tenths=0
    while [ "$tenths" -lt 300 ]; do
        case "$(rc-status --runlevel 2>/dev/null)" in
            "" | sysinit | boot) sleep 0.1; tenths=$((tenths + 1)) ;;
            *) break ;;
        esac
    done
fi
"#;

/// Defines `service_state`, which prints the state of the service of `$app` under the
/// init in `$init` as `key=value` lines: `running`, `pid`, `start_time`, `restarts`,
/// `state` (systemd), `supervised` (busybox and OpenRC: whether the init respawns it),
/// `version`.
const SERVICE_STATE: &str = r#"
service_state() {
svc="cul8er-$app"
rundir="/run/cul8er-$app"
pid=0
running=false
recorded_start=
case "$init" in
    systemd)
        pid="$(systemctl show -p MainPID --value "$svc.service" 2>/dev/null || echo 0)"
        echo "restarts=$(systemctl show -p NRestarts --value "$svc.service" 2>/dev/null)"
        echo "state=$(systemctl show -p ActiveState --value "$svc.service" 2>/dev/null)/$(systemctl show -p SubState --value "$svc.service" 2>/dev/null)"
        ;;
    openrc | busybox)
        if [ -r "$rundir/pid" ]; then
            read -r pid recorded_start <"$rundir/pid" || true
        fi
        if [ -r "$rundir/starts" ]; then
            starts="$(cat "$rundir/starts")"
            echo "restarts=$((starts > 0 ? starts - 1 : 0))"
        fi
        # Whether the init keeps it up: a dead service it supervises is between two
        # respawns, one it does not was stopped.
        if [ "$init" = busybox ]; then
            grep -qxF "::respawn:/etc/service.d/$svc" /etc/inittab 2>/dev/null
        else
            rc-service "$svc" status >/dev/null 2>&1
        fi && echo "supervised=true" || echo "supervised=false"
        ;;
esac
case "$pid" in '' | *[!0-9]*) pid=0 ;; esac
if [ "$pid" -gt 0 ] && [ -r "/proc/$pid/stat" ]; then
    # Fields after "pid (comm) ": state is 1st, starttime the 20th.
    set -- $(sed 's/.*) //' "/proc/$pid/stat")
    if [ "$1" != Z ] && [ "$1" != X ] && { [ -z "$recorded_start" ] || [ "$recorded_start" = "${20}" ]; }; then
        running=true
        echo "pid=$pid"
        echo "start_time=${20}"
    fi
fi
echo "running=$running"
if [ -L "/opt/$app/current" ]; then
    echo "version=$(basename "$(readlink "/opt/$app/current")")"
fi
}
"#;

/// Finds the app when `$app` is empty: the first `/opt/<app>` that cul8er laid out
/// (it has a `current` link and a `.cul8er` state directory), printed as `app=`; exits
/// when there is none.
const DISCOVER_APP: &str = r#"
if [ -z "$app" ]; then
    for current in /opt/*/current; do
        [ -L "$current" ] || continue
        dir="${current%/current}"
        [ -d "$dir/.cul8er" ] || continue
        app="${dir#/opt/}"
        break
    done
    echo "app=$app"
    [ -n "$app" ] || exit 0
fi
"#;

/// The status script: `sh -c STATUS cul8er APP`. An empty `APP` means the app cul8er
/// deployed into the instance, whatever its name (`list` does not know the topology).
pub(super) fn status_script() -> String {
    format!(
        "set -u\napp=\"$1\"\n{DISCOVER_APP}{DETECT_INIT}echo \"init=$init\"\n{SERVICE_STATE}service_state\n"
    )
}

/// The prepare script: `sh -c PREPARE cul8er APP USER VERSION`. Detects the init,
/// creates the service user when absent, lays out `/opt/<app>`, clears leftovers of an
/// interrupted deploy, and prints `init`, `uid`, `gid`, `deployed` (the digest of the
/// last complete deploy), `artifact` (the digest of the uploaded version, if any) and
/// the service state.
pub(super) fn prepare_script() -> String {
    format!(
        r#"set -eu
app="$1"; user="$2"; version="$3"
base="/opt/$app"
{DETECT_INIT}
# An instance that has just started may not show its init yet (systemd creates
# /run/systemd/system a moment after it starts): look again for a while.
waited=0
while [ "$init" = unknown ] && [ "$waited" -lt 30 ]; do
    sleep 1
    waited=$((waited + 1))
    {DETECT_INIT}
done
echo "init=$init"
if [ "$init" = unknown ]; then
    echo "no supported init after ${{waited}} s: /run/systemd/system is absent, there is no openrc-run, and pid 1 is not busybox init" >&2
    exit 3
fi
{WAIT_FOR_INIT}if ! id -u "$user" >/dev/null 2>&1; then
    nologin=/bin/false
    for shell in /usr/sbin/nologin /sbin/nologin; do
        if [ -x "$shell" ]; then nologin="$shell"; break; fi
    done
    if command -v useradd >/dev/null 2>&1; then
        useradd --system --user-group --no-create-home --home-dir "$base" --shell "$nologin" "$user"
    elif command -v adduser >/dev/null 2>&1 && command -v addgroup >/dev/null 2>&1; then
        addgroup -S "$user"
        adduser -S -D -H -h "$base" -s "$nologin" -G "$user" "$user"
    else
        # No user tools (busybox without adduser): the first id free as uid and gid,
        # counting down from 999, the top of the system range.
        id=999
        while [ "$id" -ge 100 ]; do
            if ! cut -d: -f3 /etc/passwd | grep -qx "$id" && ! cut -d: -f3 /etc/group | grep -qx "$id"; then
                break
            fi
            id=$((id - 1))
        done
        if [ "$id" -lt 100 ]; then
            echo "no free system id between 100 and 999 for user $user" >&2
            exit 4
        fi
        gid="$(grep "^$user:" /etc/group | cut -d: -f3)"
        if [ -z "$gid" ]; then
            echo "$user:x:$id:" >>/etc/group
            gid="$id"
        fi
        echo "$user:x:$id:$gid:cul8er release $app:$base:$nologin" >>/etc/passwd
    fi
fi
echo "uid=$(id -u "$user")"
echo "gid=$(id -g "$user")"
mkdir -p "$base/releases" "$base/.cul8er"
chmod 0755 "$base" "$base/releases"
chmod 0700 "$base/.cul8er"
rm -rf "$base/.cul8er/upload" "$base/env.new" "$base/run.new" "$base/.cul8er/service.new"
if [ -r "$base/.cul8er/deployed" ]; then
    echo "deployed=$(cat "$base/.cul8er/deployed")"
fi
if [ -d "$base/releases/$version" ] && [ -r "$base/.cul8er/artifact-$version" ]; then
    echo "artifact=$(cat "$base/.cul8er/artifact-$version")"
fi
{SERVICE_STATE}service_state
"#
    )
}

/// The activate script: `sh -c ACTIVATE cul8er APP VERSION ARTIFACT_DIGEST INIT
/// SERVICE_FILE`. Moves an uploaded artifact into `releases/<version>`, puts the new
/// env file, run script and service definition in place, switches `current`
/// atomically, and registers the service with the init (without starting it).
pub(super) fn activate_script() -> String {
    r#"set -eu
app="$1"; version="$2"; artifact="$3"; init="$4"; service_file="$5"
base="/opt/$app"
svc="cul8er-$app"
cd "$base"
if [ -d .cul8er/upload ]; then
    rm -rf "releases/$version"
    mv .cul8er/upload "releases/$version"
    echo "$artifact" >".cul8er/artifact-$version"
fi
mkdir -p "releases/$version"
touch "releases/$version"
mv -f env.new env
mv -f run.new run
mkdir -p "$(dirname "$service_file")"
mv -f .cul8er/service.new "$service_file"
ln -sfn "releases/$version" current.new
mv -Tf current.new current
case "$init" in
    systemd)
        systemctl daemon-reload
        systemctl enable "$svc.service" >/dev/null 2>&1
        ;;
    openrc)
        rc-update add "$svc" default >/dev/null
        ;;
    busybox)
        : # registered in /etc/inittab by the restart script, which also starts it
        ;;
esac
"#
    .to_owned()
}

/// The restart script: `sh -c RESTART cul8er APP INIT WAIT_SECONDS`. (Re)starts the
/// service and waits until a new main process runs, then prints the service state.
pub(super) fn restart_script() -> String {
    format!(
        "set -eu\napp=\"$1\"; init=\"$2\"; wait_seconds=\"$3\"; only_start=false\n{SERVICE_STATE}{RESTART}"
    )
}

/// The start script: `sh -c START cul8er APP WAIT_SECONDS`. Detects the init and, when
/// the service does not run (stopped by hand, or given up on by systemd), starts it
/// through the init as [`restart_script`] does and waits until it runs; a service that
/// runs is left alone. Prints `init` and the service state. Exits 6 at once when the
/// service definition is gone (the release must be deployed again).
pub(super) fn start_script() -> String {
    format!(
        r#"set -eu
app="$1"; wait_seconds="$2"; only_start=true
{DETECT_INIT}echo "init=$init"
case "$init" in
    systemd) definition="/etc/systemd/system/cul8er-$app.service" ;;
    openrc) definition="/etc/init.d/cul8er-$app" ;;
    busybox) definition="/etc/service.d/cul8er-$app" ;;
    *)
        echo "no supported init: /run/systemd/system is absent, there is no openrc-run, and pid 1 is not busybox init" >&2
        exit 3
        ;;
esac
if [ ! -e "$definition" ]; then
    echo "the service definition $definition is missing" >&2
    exit 6
fi
{WAIT_FOR_INIT}{SERVICE_STATE}{RESTART}"#
    )
}

/// The body of [`restart_script`] and [`start_script`], with `app`, `init`,
/// `wait_seconds` and `only_start` set and `service_state` defined.
const RESTART: &str = r#"
svc="cul8er-$app"
rundir="/run/cul8er-$app"
old_pid="$(service_state | sed -n 's/^pid=//p')"
if [ "$only_start" = true ] && [ -n "$old_pid" ]; then
    service_state
    exit 0
fi
case "$init" in
    systemd)
        # A unit systemd gave up on (its start limit) starts only once that is reset.
        systemctl reset-failed "$svc.service" >/dev/null 2>&1 || true
        systemctl restart "$svc.service"
        ;;
    openrc)
        rm -f "$rundir/starts"
        rc-service "$svc" restart >/dev/null
        ;;
    busybox)
        rm -f "$rundir/starts"
        line="::respawn:/etc/service.d/$svc"
        if ! grep -qxF "$line" /etc/inittab; then
            echo "$line" >>/etc/inittab
            kill -HUP 1
        elif [ -n "$old_pid" ]; then
            # init respawns it from the new `current`.
            kill -TERM "$old_pid" 2>/dev/null || true
            i=0
            while kill -0 "$old_pid" 2>/dev/null && [ "$i" -lt 100 ]; do
                sleep 0.1
                i=$((i + 1))
            done
            kill -KILL "$old_pid" 2>/dev/null || true
        else
            # Registered but not running: make init read its table again.
            kill -HUP 1
        fi
        ;;
esac
# Wait for the new main process.
i=0
limit=$((wait_seconds * 10))
while :; do
    state="$(service_state)"
    pid="$(echo "$state" | sed -n 's/^pid=//p')"
    if [ -n "$pid" ] && [ "$pid" != "$old_pid" ]; then
        break
    fi
    if [ "$i" -ge "$limit" ]; then
        echo "$state"
        echo "the service $svc did not start within $wait_seconds s" >&2
        exit 5
    fi
    sleep 0.1
    i=$((i + 1))
done
echo "$state"
"#;

/// The finish script: `sh -c FINISH cul8er APP VERSION DIGEST KEEP`. Records the
/// deploy and deletes the oldest versions beyond the newest `KEEP` (never `current`).
pub(super) fn finish_script() -> String {
    r#"set -eu
app="$1"; version="$2"; digest="$3"; keep="$4"
base="/opt/$app"
echo "$digest" >"$base/.cul8er/deployed.new"
mv -f "$base/.cul8er/deployed.new" "$base/.cul8er/deployed"
cd "$base/releases"
ls -1t | tail -n "+$((keep + 1))" | while read -r old; do
    [ "$old" = "$version" ] && continue
    rm -rf "./$old"
    rm -f "$base/.cul8er/artifact-$old"
    echo "pruned=$old"
done
"#
    .to_owned()
}

/// A hook: `sh -c HOOK cul8er APP COMMAND`, as root in `current`, with the release's
/// environment loaded from the env file.
pub(super) fn hook_script() -> String {
    r#"set -eu
app="$1"; command="$2"
cd "/opt/$app/current"
set -a
. "/opt/$app/env"
set +a
exec /bin/sh -c "$command"
"#
    .to_owned()
}

/// The run script the service executes: records its pid and start count (busybox and
/// OpenRC, where the init does not say), loads the environment, and execs `start`, so
/// the app's process is the service's main process.
pub(super) fn run_script(app: &str, version: &str, workdir: &str, start: &str) -> String {
    let base = format!("/opt/{app}");
    let rundir = format!("/run/cul8er-{app}");
    format!(
        r#"#!/bin/sh
# Written by cul8er for release {app} {version}; rewritten on every deploy.
rundir={rundir}
if [ -d "$rundir" ] && [ -w "$rundir" ]; then
    set -- $(sed 's/.*) //' /proc/$$/stat)
    echo "$$ ${{20}}" >"$rundir/pid.new" && mv -f "$rundir/pid.new" "$rundir/pid"
    starts="$(cat "$rundir/starts" 2>/dev/null || echo 0)"
    echo "$((starts + 1))" >"$rundir/starts"
fi
set -a
. {env}
set +a
cd {workdir} || exit 1
exec {start}
"#,
        rundir = quote(&rundir),
        env = quote(&format!("{base}/env")),
        workdir = quote(workdir),
    )
}

/// The env file: one `NAME='value'` line per variable, readable by sh and systemd.
pub(super) fn env_file<'a>(vars: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::from("# Written by cul8er; rewritten on every deploy.\n");
    for (name, value) in vars {
        out.push_str(name);
        out.push('=');
        out.push_str(&quote(value));
        out.push('\n');
    }
    out
}

/// The service definition for `init`.
pub(super) fn service_definition(
    init: InitSystem,
    app: &str,
    user: &str,
    uid: u32,
    gid: u32,
) -> String {
    let layout = Layout::new(app);
    let run = layout.run_script();
    match init {
        InitSystem::Systemd => format!(
            "# Written by cul8er for release {app}; rewritten on every deploy.\n\
             [Unit]\n\
             Description=cul8er release {app}\n\
             After=network.target\n\
             \n\
             [Service]\n\
             Type=exec\n\
             User={uid}\n\
             Group={gid}\n\
             ExecStart={run}\n\
             Restart=always\n\
             RestartSec=1\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n"
        ),
        InitSystem::Openrc => format!(
            "#!/sbin/openrc-run\n\
             # Written by cul8er for release {app}; rewritten on every deploy.\n\
             description=\"cul8er release {app}\"\n\
             supervisor=supervise-daemon\n\
             # Debian's supervise-daemon never starts the child with command_user (in\n\
             # an unprivileged container); setpriv drops privileges and keeps the pid.\n\
             if [ -x /usr/bin/setpriv ]; then\n\
             \tcommand=/usr/bin/setpriv\n\
             \tcommand_args=\"--reuid={uid} --regid={gid} --init-groups {run}\"\n\
             else\n\
             \tcommand={run}\n\
             \tcommand_user=\"{uid}:{gid}\"\n\
             fi\n\
             respawn_delay=1\n\
             respawn_max=0\n\
             output_log={log}\n\
             error_log={log}\n\
             \n\
             depend() {{\n\
             \tuse localmount\n\
             \tafter net\n\
             }}\n\
             \n\
             start_pre() {{\n\
             \tcheckpath -d -m 0755 -o {uid}:{gid} {rundir}\n\
             }}\n",
            log = layout.log,
            rundir = layout.rundir,
        ),
        InitSystem::Busybox => format!(
            "#!/bin/sh\n\
             # Written by cul8er for release {app}; rewritten on every deploy.\n\
             # busybox init runs it from its /etc/inittab respawn line.\n\
             rundir={rundir}\n\
             mkdir -p \"$rundir\" && chown {uid}:{gid} \"$rundir\" && chmod 0755 \"$rundir\"\n\
             exec >>{log} 2>&1\n\
             exec su -s /bin/sh {user} -c 'exec {run}'\n",
            rundir = layout.rundir,
            log = layout.log,
            user = quote(user),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_survives_single_quotes_and_dollars() {
        assert_eq!(quote("plain"), "'plain'");
        assert_eq!(quote("it's $HOME"), r#"'it'\''s $HOME'"#);
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn env_file_quotes_every_value() {
        let text = env_file([("A", "1"), ("B", "x'y $z")].into_iter());
        assert!(text.contains("A='1'\n"), "{text}");
        assert!(text.contains(r#"B='x'\''y $z'"#), "{text}");
    }

    #[test]
    fn run_script_execs_the_start_command_in_the_workdir() {
        let text = run_script("web", "1.0", "/opt/web/current", "httpd -f -p 8080");
        assert!(text.ends_with("cd '/opt/web/current' || exit 1\nexec httpd -f -p 8080\n"));
        assert!(text.contains(". '/opt/web/env'"), "{text}");
    }

    #[test]
    fn service_definitions_name_the_user_and_the_run_script() {
        let unit = service_definition(InitSystem::Systemd, "web", "web", 998, 997);
        assert!(
            unit.contains("User=998\nGroup=997\nExecStart=/opt/web/run\n"),
            "{unit}"
        );
        assert!(unit.contains("Restart=always"), "{unit}");
        let rc = service_definition(InitSystem::Openrc, "web", "web", 998, 997);
        assert!(rc.starts_with("#!/sbin/openrc-run\n"), "{rc}");
        assert!(rc.contains("command_user=\"998:997\""), "{rc}");
        assert!(
            rc.contains("command_args=\"--reuid=998 --regid=997 --init-groups /opt/web/run\""),
            "{rc}"
        );
        // Debian's openrc has no `localmount` service: `need` would refuse to start.
        assert!(rc.contains("\tuse localmount\n"), "{rc}");
        let bb = service_definition(InitSystem::Busybox, "web", "web", 998, 997);
        assert!(
            bb.contains("exec su -s /bin/sh 'web' -c 'exec /opt/web/run'"),
            "{bb}"
        );
        assert!(bb.contains("chown 998:997"), "{bb}");
    }

    /// Regression: a release deployed into a systemd instance that had just started
    /// failed with "Failed to connect to bus": systemd makes /run/systemd/system, by
    /// which the init is detected, before its control socket.
    #[test]
    fn a_deploy_waits_for_systemds_control_socket() {
        let prepare = prepare_script();
        let detected = prepare.find("echo \"init=$init\"").unwrap();
        let waits = prepare
            .find("[ ! -S /run/systemd/private ]")
            .expect("prepare waits for systemd's control socket");
        assert!(detected < waits, "it waits once the init is known");
        assert!(start_script().contains(WAIT_FOR_INIT));
    }

    #[test]
    fn start_leaves_a_running_service_alone_and_restart_does_not() {
        let start = start_script();
        let guard = start
            .find("if [ \"$only_start\" = true ] && [ -n \"$old_pid\" ]")
            .expect("the start script checks for a running service");
        for command in [
            "systemctl restart",
            "rc-service \"$svc\" restart",
            "kill -HUP 1",
        ] {
            let acts = start.find(command).expect("it starts through each init");
            assert!(guard < acts, "the check comes before `{command}`");
        }
        assert!(start.contains("only_start=true"), "{start}");
        assert!(start.contains("echo \"init=$init\""), "it says which init");
        // The service state function is defined before it is used.
        assert!(start.find("service_state() {").unwrap() < guard);
        // Regression: in an instance still booting OpenRC, a service the boot has not
        // started yet reads as stopped; starting it before the runlevel left it running
        // unrecorded by OpenRC (so `rc-service stop` no longer stopped it). The start
        // waits for the runlevel first, as a deploy does.
        let waits = start
            .find("rc-status --runlevel")
            .expect("the start script waits for OpenRC's runlevel");
        assert!(waits < guard, "it waits before reading the state");
        assert!(prepare_script().contains(WAIT_FOR_INIT));
        // A lost service definition is found before anything starts.
        let layout = Layout::new("$app");
        for init in [InitSystem::Systemd, InitSystem::Openrc, InitSystem::Busybox] {
            let definition = format!("definition=\"{}\"", layout.service_file(init));
            let found = start.find(&definition).expect(&definition);
            assert!(found < guard, "{definition}");
        }
        let restart = restart_script();
        assert!(restart.contains("only_start=false"), "{restart}");
        // Both start a unit systemd gave up on, and re-register a busybox line.
        for script in [&start, &restart] {
            assert!(script.contains("systemctl reset-failed"), "{script}");
            assert!(script.contains("echo \"$line\" >>/etc/inittab"), "{script}");
        }
    }

    #[test]
    fn layout_paths() {
        let layout = Layout::new("api");
        assert_eq!(layout.upload(), "/opt/api/.cul8er/upload");
        assert_eq!(
            layout.service_file(InitSystem::Systemd),
            "/etc/systemd/system/cul8er-api.service"
        );
        assert_eq!(
            layout.service_file(InitSystem::Busybox),
            "/etc/service.d/cul8er-api"
        );
        assert_eq!(
            layout.service_file(InitSystem::Openrc),
            "/etc/init.d/cul8er-api"
        );
    }
}
