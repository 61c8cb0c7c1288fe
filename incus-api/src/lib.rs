//! A typed client for the Incus REST API.
//!
//! It speaks to `incusd` over the local unix socket or over HTTPS with a client
//! certificate and a pinned server certificate, and knows nothing about cul8er's
//! topologies: it is the one place where the Incus protocol and its quirks live.
