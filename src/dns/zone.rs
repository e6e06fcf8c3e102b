//! [`ZoneView`]: the immutable snapshot of everything the DNS server answers,
//! built from the config and the applied state, and the pure lookup that turns
//! a question into a [`Lookup`].
//!
//! Everything here is computed once per applied state change so that a query
//! only does a hash lookup and a slice; nothing here does I/O.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, NS, SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use tracing::warn;

use crate::config::{Config, Target};
use crate::model::AppliedState;

/// SOA timers. Secondaries never transfer this zone (every node answers from
/// the replicated state), so these only matter to tools that read them; the
/// values are the conventional ones.
const SOA_REFRESH: i32 = 3600;
const SOA_RETRY: i32 = 600;
const SOA_EXPIRE: i32 = 86400;

/// The label under a service that carries the `instance=`/`epoch=` TXT record.
const META_LABEL: &str = "_highlander";

/// Immutable snapshot of everything DNS answers; rebuilt on every applied
/// state change and shared with every query through a `watch` channel.
#[derive(Debug, Clone)]
pub struct ZoneView {
    /// The zone apex, lowercase. `None` only if the configured zone could not
    /// be turned into a DNS name, in which case every question is refused
    /// rather than answered for a zone we do not understand.
    origin: Option<LowerName>,
    /// The SOA with the configured TTL, answered at the apex.
    soa: Record,
    /// The SOA placed in AUTHORITY of negative answers, with TTL
    /// min(TTL, MINIMUM) as RFC 2308 asks.
    negative_soa: Record,
    /// One NS per configured node, in node id order.
    ns: Vec<Record>,
    /// A/AAAA of every nameserver with a specified address, for ADDITIONAL.
    glue: Vec<Record>,
    /// Every name that exists in the zone (apex and empty non-terminals
    /// included). A name missing here is NXDOMAIN.
    names: HashMap<LowerName, Node>,
    /// Service names and their `_highlander` names: answered only while the
    /// node's lease holds (checked per query by the server).
    leased: HashSet<LowerName>,
}

/// What one existing name in the zone holds.
#[derive(Debug, Clone)]
enum Node {
    /// The zone apex: SOA and NS.
    Apex,
    /// Records owned by the name, grouped by type (each type's records are
    /// contiguous). Empty for an empty non-terminal or a nameserver without
    /// an address: the name exists but holds nothing (NODATA).
    Records(Vec<Record>),
    /// A service name (or its `_highlander` TXT name) that has no answer to
    /// give: no decision yet, or this node is outside the majority.
    Unavailable,
}

/// The outcome of looking a question up in a [`ZoneView`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup<'a> {
    /// NOERROR with records; `additionals` is glue for NS answers.
    Answer {
        answers: &'a [Record],
        additionals: &'a [Record],
    },
    /// The name exists but has no records of the type: NOERROR, SOA in AUTHORITY.
    NoData,
    /// The name does not exist: NXDOMAIN, SOA in AUTHORITY.
    NxDomain,
    /// The name exists but this node cannot give its current answer.
    ServFail,
    /// The name is outside the zone; we are not a resolver.
    Refused,
}

impl<'a> Lookup<'a> {
    fn answer(answers: &'a [Record]) -> Self {
        Lookup::Answer {
            answers,
            additionals: &[],
        }
    }
}

impl ZoneView {
    /// Builds the view of `config`'s zone at `applied`.
    ///
    /// `answering == false` means the node is outside the majority: service
    /// names (and their `_highlander` TXT) get SERVFAIL so resolvers move to
    /// another nameserver, while SOA/NS are still answered.
    pub fn build(config: &Config, applied: &AppliedState, answering: bool) -> ZoneView {
        let ttl = u32::try_from(config.dns.ttl.as_secs()).unwrap_or(u32::MAX / 2);
        let origin = match Name::from_ascii(&config.dns.zone) {
            Ok(name) => Some(name.to_lowercase()),
            Err(error) => {
                // Config validation makes this unreachable; refusing is the
                // safe way to fail if it ever is not.
                warn!(%error, zone = %config.dns.zone, "the DNS zone is not a valid name; refusing every question");
                None
            }
        };
        let apex = origin.clone().unwrap_or_else(Name::root);
        let under_apex = |label: &str| -> Option<Name> {
            match Name::from_ascii(label).and_then(|n| n.append_domain(&apex)) {
                Ok(name) => Some(name.to_lowercase()),
                Err(error) => {
                    warn!(%error, label, zone = %apex, "name does not fit in the DNS zone; leaving it out");
                    None
                }
            }
        };

        let mut names: HashMap<LowerName, Node> = HashMap::new();
        let mut leased: HashSet<LowerName> = HashSet::new();
        let mut ns = Vec::new();
        let mut glue = Vec::new();
        let mut mname = None;
        for node in &config.cluster.nodes {
            let Some(host) = under_apex(&format!("ns{}", node.id)) else {
                continue;
            };
            // Nodes are sorted by id, so the first one is the lowest.
            mname.get_or_insert_with(|| host.clone());
            ns.push(Record::from_rdata(
                apex.clone(),
                ttl,
                RData::NS(NS(host.clone())),
            ));
            let ip = node.dns.ip();
            let mut addresses = Vec::new();
            if !ip.is_unspecified() {
                let rdata = match ip {
                    IpAddr::V4(v4) => RData::A(A(v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                };
                let record = Record::from_rdata(host.clone(), ttl, rdata);
                glue.push(record.clone());
                addresses.push(record);
            }
            names.insert(LowerName::new(&host), Node::Records(addresses));
        }

        let rname = Name::from_ascii(&config.dns.hostmaster)
            .map(|n| n.to_lowercase())
            .unwrap_or_else(|error| {
                warn!(%error, hostmaster = %config.dns.hostmaster, "the SOA hostmaster is not a valid name; using hostmaster.<zone>");
                under_apex("hostmaster").unwrap_or_else(|| apex.clone())
            });
        let soa_data = SOA::new(
            mname.unwrap_or_else(|| apex.clone()),
            rname,
            // The serial only has to grow when answers change; it wraps like
            // RFC 1982 serial arithmetic expects.
            applied.index as u32,
            SOA_REFRESH,
            SOA_RETRY,
            SOA_EXPIRE,
            ttl,
        );
        let soa = Record::from_rdata(apex.clone(), ttl, RData::SOA(soa_data));
        let mut negative_soa = soa.clone();
        // MINIMUM is the TTL too, so this is the TTL; kept as the RFC 2308
        // rule so that changing MINIMUM stays correct.
        negative_soa.ttl = soa.ttl.min(ttl);

        for service in &config.services {
            let Some(name) = under_apex(&service.name) else {
                continue;
            };
            let Some(meta) = under_apex(&format!("{META_LABEL}.{}", service.name)) else {
                continue;
            };
            let lower = LowerName::new(&name);
            if names.contains_key(&lower) {
                // A service called ns<id> would shadow a nameserver's address
                // and break the delegation; the nameserver wins.
                warn!(service = %service.name, name = %name, "service name collides with a nameserver name; answering the nameserver");
                continue;
            }
            let active = applied
                .state
                .service(&service.name)
                .and_then(|s| Some((s.active.as_deref()?, s.epoch)))
                // An instance the config no longer lists has no target to answer.
                .and_then(|(instance, epoch)| Some((service.instance(instance)?, epoch)));
            let answer = active.filter(|_| answering).and_then(|(instance, epoch)| {
                let rdata = match &instance.target {
                    Target::Cname(cname) => match Name::from_ascii(cname) {
                        Ok(target) => RData::CNAME(CNAME(target)),
                        Err(error) => {
                            // Config validation makes this unreachable;
                            // SERVFAIL is the honest answer if it is not.
                            warn!(%error, service = %service.name, instance = %instance.name, "CNAME target is not a valid name");
                            return None;
                        }
                    },
                    Target::A(ip) => RData::A(A(*ip)),
                    Target::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
                };
                let txt = TXT::new(vec![
                    format!("instance={}", instance.name),
                    format!("epoch={epoch}"),
                ]);
                Some((
                    Node::Records(vec![Record::from_rdata(name.clone(), ttl, rdata)]),
                    Node::Records(vec![Record::from_rdata(meta.clone(), ttl, RData::TXT(txt))]),
                ))
            });
            let (target, txt) = answer.unwrap_or((Node::Unavailable, Node::Unavailable));
            leased.insert(lower.clone());
            leased.insert(LowerName::new(&meta));
            names.insert(lower, target);
            names.insert(LowerName::new(&meta), txt);
        }

        // Every ancestor of an existing name exists too (RFC 8020): it must
        // answer NODATA, never NXDOMAIN, or resolvers that cut NXDOMAIN trees
        // would lose the names below it. Today every ancestor already exists
        // (the parent of _highlander.<service> is the service); this keeps
        // that true for any deeper name added later.
        let owners: Vec<Name> = names.keys().map(Name::from).collect();
        for owner in owners {
            let mut parent = owner.base_name();
            while parent.num_labels() > apex.num_labels() {
                names
                    .entry(LowerName::new(&parent))
                    .or_insert_with(|| Node::Records(Vec::new()));
                parent = parent.base_name();
            }
        }
        names.insert(LowerName::new(&apex), Node::Apex);

        ZoneView {
            origin: origin.map(LowerName::from),
            soa,
            negative_soa,
            ns,
            glue,
            names,
            leased,
        }
    }

    /// The names whose UDP answers `dns::fast` pre-encodes: the apex (not
    /// leased) and every service and `_highlander` name (leased: answered
    /// only while the lease holds, S3).
    pub(crate) fn hot_names(&self) -> impl Iterator<Item = (&LowerName, bool)> {
        let apex = self.origin.iter().map(|origin| (origin, false));
        apex.chain(self.leased.iter().map(|name| (name, true)))
    }

    /// The SOA to put in AUTHORITY of NODATA and NXDOMAIN answers.
    pub(crate) fn negative_soa(&self) -> &Record {
        &self.negative_soa
    }

    /// Like [`ZoneView::lookup`], but service names are SERVFAIL unless
    /// `lease_holds`: a node outside the majority must not answer them (S3).
    pub(crate) fn lookup_leased(
        &self,
        qname: &LowerName,
        qtype: RecordType,
        lease_holds: bool,
    ) -> Lookup<'_> {
        if !lease_holds && self.leased.contains(qname) {
            return Lookup::ServFail;
        }
        self.lookup(qname, qtype)
    }

    /// Answers `qtype` at `qname` (already lowercase).
    ///
    /// ANY is answered minimally (RFC 8482): one RRset, the SOA at the apex,
    /// the service's one record elsewhere.
    pub(crate) fn lookup(&self, qname: &LowerName, qtype: RecordType) -> Lookup<'_> {
        match &self.origin {
            Some(origin) if origin.zone_of(qname) => {}
            _ => return Lookup::Refused,
        }
        let Some(node) = self.names.get(qname) else {
            return Lookup::NxDomain;
        };
        match node {
            Node::Unavailable => Lookup::ServFail,
            Node::Apex => match qtype {
                RecordType::SOA | RecordType::ANY => {
                    Lookup::answer(std::slice::from_ref(&self.soa))
                }
                RecordType::NS => Lookup::Answer {
                    answers: &self.ns,
                    additionals: &self.glue,
                },
                _ => Lookup::NoData,
            },
            Node::Records(records) => {
                let Some(first) = records.first() else {
                    return Lookup::NoData;
                };
                // A CNAME owner holds nothing else, so it answers every type;
                // its out-of-zone target is left for the resolver to chase.
                let wanted = match (first.record_type(), qtype) {
                    (RecordType::CNAME, _) | (_, RecordType::ANY) => first.record_type(),
                    (_, qtype) => qtype,
                };
                let start = records.iter().position(|r| r.record_type() == wanted);
                match start {
                    Some(start) => {
                        let len = records[start..]
                            .iter()
                            .take_while(|r| r.record_type() == wanted)
                            .count();
                        Lookup::answer(&records[start..start + len])
                    }
                    None => Lookup::NoData,
                }
            }
        }
    }
}
