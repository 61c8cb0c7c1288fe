//! cul8er-proxy: the load balancer that moves traffic between versions.
//!
//! A weighted HTTP/1.1, HTTP/2 and TCP reverse proxy with active health checks,
//! passive ejection, draining and atomic live reconfiguration. It knows nothing of Incus.
