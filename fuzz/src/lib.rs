//! What the fuzz targets share: a directory holding the files a config
//! names (so configs get past reading their secret and token), and the zone
//! the DNS target answers from, with the UDP paths over it. Nothing here is
//! fuzzed itself.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use highlander::config::Config;
use highlander::dns::{Lease, UdpAnswerer, UdpBudget, ZoneView};
use highlander::model::{AppliedState, Epoch, ServiceState};

/// The zone every DNS input is answered from: three nameservers (IPv4, IPv6,
/// no address) and a CNAME, an A, an AAAA and an undecided service, so every
/// kind of answer is one mutation away. Also a seed of `config_parse`.
pub const ZONE_CONFIG: &str = include_str!("../corpus/config_parse/zone.toml");

/// A directory with `cluster.secret` and `api.token`, made once per process,
/// in which configs are parsed as `highlander.toml`.
pub fn config_file() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join("highlander-fuzz");
        std::fs::create_dir_all(&dir).expect("create the fuzz directory");
        std::fs::write(dir.join("cluster.secret"), "fuzz-secret-0123456789abcdef")
            .expect("write the secret");
        std::fs::write(dir.join("api.token"), "fuzz-token-0123456789abcdef")
            .expect("write the token");
        dir
    })
    .join("highlander.toml")
}

/// The view of [`ZONE_CONFIG`] with web, db and v6 decided.
pub fn zone_view() -> Arc<ZoneView> {
    static VIEW: OnceLock<Arc<ZoneView>> = OnceLock::new();
    Arc::clone(VIEW.get_or_init(|| {
        let config = Config::parse(&config_file(), ZONE_CONFIG).expect("the zone config is valid");
        let mut applied = AppliedState {
            index: 42,
            ..AppliedState::default()
        };
        for (service, instance, epoch) in [("web", "web1", 3), ("db", "db2", 7), ("v6", "v6a", 1)] {
            applied.state.services.insert(
                service.to_owned(),
                ServiceState {
                    active: Some(instance.to_owned()),
                    epoch: Epoch(epoch),
                    ..ServiceState::default()
                },
            );
        }
        Arc::new(ZoneView::build(&config, &applied, true))
    }))
}

/// The UDP path over [`zone_view`], made once per process for each lease
/// (held or lapsed) and budget (unlimited or spent).
pub fn udp_answerer(lease_held: bool, budget: UdpBudget) -> &'static UdpAnswerer {
    static ANSWERERS: OnceLock<[UdpAnswerer; 4]> = OnceLock::new();
    let answerers = ANSWERERS.get_or_init(|| {
        [
            (true, UdpBudget::Unlimited),
            (false, UdpBudget::Unlimited),
            (true, UdpBudget::Spent),
            (false, UdpBudget::Spent),
        ]
        .map(|(held, budget)| {
            let lease = if held { Lease::forever() } else { Lease::new() };
            UdpAnswerer::new(zone_view(), lease, budget)
        })
    });
    let index = usize::from(!lease_held) + 2 * usize::from(budget == UdpBudget::Spent);
    &answerers[index]
}
