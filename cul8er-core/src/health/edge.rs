//! Checks answered by the edge's own active health checks, for resources behind it.
//!
//! The edge probes every backend (also those at weight 0) with the service's HTTP or
//! TCP check; the gate reads the verdict instead of probing a second time.

use std::time::Duration;

use cul8er_proxy::ServiceHealth;
use cul8er_proxy::health::HealthStatus;

use super::{HealthSource, Probed};
use crate::edge::Edge;

/// One backend of an edge service, as the edge's active checks see it.
#[derive(Debug, Clone)]
pub struct EdgeSource {
    edge: Edge,
    service: String,
    backend: String,
}

impl EdgeSource {
    /// The backend `backend` (an instance name) of `service` in `edge`.
    #[must_use]
    pub fn new(edge: Edge, service: impl Into<String>, backend: impl Into<String>) -> Self {
        Self {
            edge,
            service: service.into(),
            backend: backend.into(),
        }
    }
}

/// The verdict on `backend` in a service's health report: healthy passes, unhealthy or
/// passively ejected fails, not yet checked (or not yet in the configuration) is
/// pending.
#[must_use]
pub fn backend_verdict(health: &ServiceHealth, backend: &str) -> Probed {
    let Some(b) = health.backends.iter().find(|b| b.name == backend) else {
        return Probed::pending(format!(
            "the edge's service {} has no backend {backend} yet",
            health.name
        ));
    };
    let last = b.last_check.clone().unwrap_or_default();
    match b.health {
        HealthStatus::Healthy if b.ejected => Probed::fail(format!(
            "the edge ejected it after failed requests (last check: {last})"
        )),
        HealthStatus::Healthy => Probed::pass(if last.is_empty() {
            "healthy at the edge".to_owned()
        } else {
            last
        }),
        HealthStatus::Unhealthy => Probed::fail(if last.is_empty() {
            "unhealthy at the edge".to_owned()
        } else {
            last
        }),
        HealthStatus::Unknown => Probed::pending("the edge has not checked it yet"),
    }
}

impl HealthSource for EdgeSource {
    fn describe(&self) -> String {
        format!(
            "the edge's check of {} in service {}",
            self.backend, self.service
        )
    }

    async fn check(&self, _timeout: Duration) -> Probed {
        match self.edge.backend_health(&self.service).await {
            Ok(health) => backend_verdict(&health, &self.backend),
            Err(e) => Probed::fail(format!(
                "cannot ask the edge: {}",
                crate::execute::error_chain(&e)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use cul8er_proxy::BackendHealth;

    use super::*;
    use crate::health::Verdict;

    fn backend(
        name: &str,
        health: HealthStatus,
        ejected: bool,
        last: Option<&str>,
    ) -> BackendHealth {
        BackendHealth {
            name: name.into(),
            address: "10.0.0.2:8080".into(),
            weight: 1,
            health,
            ejected,
            last_check: last.map(str::to_owned),
        }
    }

    #[test]
    fn edge_status_maps_to_verdicts() {
        let health = ServiceHealth {
            name: "web".into(),
            available: 1,
            backends: vec![
                backend("a", HealthStatus::Healthy, false, Some("HTTP 200")),
                backend(
                    "b",
                    HealthStatus::Unhealthy,
                    false,
                    Some("HTTP 500, expected 200"),
                ),
                backend("c", HealthStatus::Unknown, false, None),
                backend("d", HealthStatus::Healthy, true, Some("HTTP 200")),
            ],
        };
        let a = backend_verdict(&health, "a");
        assert_eq!((a.verdict, a.reason.as_str()), (Verdict::Pass, "HTTP 200"));
        let b = backend_verdict(&health, "b");
        assert_eq!(
            (b.verdict, b.reason.as_str()),
            (Verdict::Fail, "HTTP 500, expected 200")
        );
        assert_eq!(backend_verdict(&health, "c").verdict, Verdict::Pending);
        assert_eq!(backend_verdict(&health, "d").verdict, Verdict::Fail);
        let missing = backend_verdict(&health, "e");
        assert_eq!(missing.verdict, Verdict::Pending);
        assert!(
            missing.reason.contains("no backend e"),
            "{}",
            missing.reason
        );
    }
}
