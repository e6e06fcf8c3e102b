//! `[cluster.tls]`: three in-process nodes whose links are mutual TLS, with
//! a CA and node certificates made by the test (rcgen) for 127.0.0.1.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};

use crate::cluster_inprocess::TestCluster;
use crate::harness::{answer, eventually};

/// A CA that signs node certificates.
struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert, key })
    }

    /// A node certificate for 127.0.0.1 (an IP SAN: peers verify the `rpc`
    /// IP address), usable as server and as client; `(cert PEM, key PEM)`.
    fn node(&self, id: u64) -> Result<(String, String)> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("node {id}"));
        params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse()?)];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Writes `ca.pem` (the cluster CA) and, per node, `node-N.pem` and
/// `node-N.key`, signed by `signer(id)`.
fn write_certs(
    dir: &Path,
    ca: &Ca,
    signer: impl Fn(u64) -> Result<(String, String)>,
) -> Result<()> {
    std::fs::write(dir.join("ca.pem"), ca.cert.pem())?;
    for id in 1..=3 {
        let (cert, key) = signer(id)?;
        std::fs::write(dir.join(format!("node-{id}.pem")), cert)?;
        std::fs::write(dir.join(format!("node-{id}.key")), key)?;
    }
    Ok(())
}

fn tls_toml(id: u64) -> String {
    format!(
        "[cluster.tls]\ncert_file = \"node-{id}.pem\"\nkey_file = \"node-{id}.key\"\nca_file = \"ca.pem\"\n"
    )
}

/// Over mutual TLS the nodes elect a leader and every node answers the
/// first decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_elect_a_leader_and_answer_over_tls() -> Result<()> {
    let ca = Ca::new("highlander test CA")?;
    let cluster = TestCluster::start_with("majority", tls_toml, |dir| {
        write_certs(dir, &ca, |id| ca.node(id))
    })
    .await?;
    cluster.leader().await?;
    for id in 1..=3 {
        let dns = cluster.node(id).dns;
        let first = eventually(Duration::from_secs(10), "the first decision", || {
            answer(dns)
        })
        .await?;
        assert_eq!((first.instance.as_str(), first.epoch), ("primary", 1));
    }
    cluster.stop().await
}

/// A node whose certificate is signed by another CA is refused both ways:
/// the other two keep a quorum and answer, and it never answers service
/// names nor learns of a leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_certificate_from_another_ca_is_refused() -> Result<()> {
    let ca = Ca::new("highlander test CA")?;
    let rogue = Ca::new("another CA")?;
    let cluster = TestCluster::start_with("majority", tls_toml, |dir| {
        write_certs(
            dir,
            &ca,
            |id| {
                if id == 3 { rogue.node(id) } else { ca.node(id) }
            },
        )
    })
    .await?;

    eventually(
        Duration::from_secs(10),
        "nodes 1 and 2 agree on an acting leader",
        || async {
            let named: HashSet<Option<u64>> = (1..=2)
                .map(|id| cluster.node(id).cluster.role().2)
                .collect();
            Ok(match named.into_iter().collect::<Vec<_>>()[..] {
                [Some(leader)]
                    if leader != 3 && cluster.node(leader).cluster.is_acting_leader() =>
                {
                    Some(leader)
                }
                _ => None,
            })
        },
    )
    .await?;
    for id in 1..=2 {
        let dns = cluster.node(id).dns;
        let first = eventually(Duration::from_secs(10), "the first decision", || {
            answer(dns)
        })
        .await?;
        assert_eq!((first.instance.as_str(), first.epoch), ("primary", 1));
    }

    // An observation window: a node whose links worked would have the
    // decision within a few heartbeats of the others.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    let refused = cluster.node(3);
    while tokio::time::Instant::now() < deadline {
        assert_eq!(
            answer(refused.dns).await?,
            None,
            "the refused node answered"
        );
        assert_eq!(
            refused.cluster.role().2,
            None,
            "the refused node knows a leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.stop().await
}
