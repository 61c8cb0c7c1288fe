//! Builders for the devices cul8er uses, set through instance or profile config.
//!
//! A device is a map of string keys; these functions spell the keys once.

use crate::instances::Device;

fn device(kind: &str, pairs: &[(&str, &str)]) -> Device {
    let mut d = Device::new();
    d.insert("type".into(), kind.into());
    for (k, v) in pairs {
        d.insert((*k).into(), (*v).into());
    }
    d
}

/// A proxy device: `listen` and `connect` as `tcp:ADDR:PORT` (or `udp:`, `unix:`),
/// bound on the host.
#[must_use]
pub fn proxy(listen: &str, connect: &str) -> Device {
    device(
        "proxy",
        &[("listen", listen), ("connect", connect), ("bind", "host")],
    )
}

/// A disk device mounting host directory `source` at `path`.
#[must_use]
pub fn disk_host_path(source: &str, path: &str) -> Device {
    device("disk", &[("source", source), ("path", path)])
}

/// A disk device mounting custom volume `volume` of `pool` at `path`.
#[must_use]
pub fn disk_volume(pool: &str, volume: &str, path: &str) -> Device {
    device(
        "disk",
        &[("pool", pool), ("source", volume), ("path", path)],
    )
}

/// A root disk on `pool`.
#[must_use]
pub fn root_disk(pool: &str) -> Device {
    device("disk", &[("pool", pool), ("path", "/")])
}

/// A NIC attached to managed network `network`, named `name` inside.
#[must_use]
pub fn nic(network: &str, name: &str) -> Device {
    device("nic", &[("network", network), ("name", name)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_has_its_keys() {
        let d = proxy("tcp:127.0.0.1:8080", "tcp:127.0.0.1:80");
        assert_eq!(d["type"], "proxy");
        assert_eq!(d["listen"], "tcp:127.0.0.1:8080");
        assert_eq!(d["connect"], "tcp:127.0.0.1:80");
    }
}
