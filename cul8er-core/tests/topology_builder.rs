//! A topology built in code is the same model as the same topology read from a file,
//! and the builder refuses what a file would be refused for.

use cul8er_core::topology::{
    self, Expose, Host, ImageRef, LoadOptions, Network, ProblemKind, Protocol, Release, Resource,
    StrategyKind, Topology,
};

#[test]
fn builder_and_file_give_the_same_model() {
    let source = r#"
        topology shop {
            host local
            network shop-net subnet="10.20.0.1/24" nat=#false
            resource web {
                image "cul8er-busybox"
                replicas 3
                network shop-net {
                    expose 8080 public=80 protocol=http hostname="shop.example.com"
                }
                release web version="2.0.0" {
                    start "httpd -f -p 8080"
                }
                strategy blue-green
            }
        }
    "#;
    let env = |_: &str| None;
    let parsed = topology::parse_one(source, "shop.kdl", &LoadOptions::new(&env)).unwrap();
    let built = Topology::builder("shop")
        .host(Host::local("local"))
        .network(Network::bridge("shop-net", Some("10.20.0.1/24"), false))
        .resource(
            Resource::new("web", ImageRef::alias("cul8er-busybox"))
                .replicas(3)
                .expose(
                    "shop-net",
                    Expose::new(8080, 80, Protocol::Http).hostname("shop.example.com"),
                )
                .release(Release::new("web", "2.0.0", "httpd -f -p 8080"))
                .strategy(StrategyKind::BlueGreen),
        )
        .build()
        .unwrap();
    assert_eq!(built, parsed);
}

#[test]
fn builder_applies_the_file_rules() {
    let err = Topology::builder("shop")
        .host(Host::local("a"))
        .host(Host::local("a"))
        .resource(
            Resource::new("node_1", ImageRef::alias("x"))
                .on("b")
                .replicas(0),
        )
        .resource(
            Resource::new("api", ImageRef::alias("x"))
                .on("a")
                .expose("missing", Expose::new(80, 80, Protocol::Tcp))
                .strategy(StrategyKind::Canary),
        )
        .resource(
            Resource::new("db", ImageRef::alias("x"))
                .on("a")
                .expose("missing", Expose::new(80, 80, Protocol::Tcp)),
        )
        .build()
        .unwrap_err();
    for kind in [
        ProblemKind::Duplicate,
        ProblemKind::InvalidName,
        ProblemKind::InvalidValue,
        ProblemKind::UndefinedReference,
        ProblemKind::PortConflict,
    ] {
        assert!(err.has(kind), "{kind:?} missing: {:?}", err.problems());
    }
    // Built topologies have no source: problems carry no span.
    assert!(err.problems().iter().all(|p| p.span().is_none()));
}
