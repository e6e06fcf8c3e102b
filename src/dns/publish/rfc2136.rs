//! RFC 2136 dynamic updates, signed with TSIG (RFC 8945), to a primary
//! server such as BIND, Knot or PowerDNS.
//!
//! Every message, reads included, is signed and every response's signature
//! is checked, so neither the read a write is based on nor the server's
//! verdict can be forged on the path. A message goes over UDP, which gets
//! half of `timeout`; a truncated response, a UDP error or no answer in
//! that time is asked again over TCP, in the time left (a firewall that
//! drops UDP, a lost datagram). Repeating an update is safe: it is
//! conditional, so one that already landed is refused, not applied twice.
//!
//! An update replaces the record and its marker in one atomic message whose
//! prerequisite is the marker exactly as read (RFC 2136 §2.4.2 "RRset
//! exists, value dependent"), or its absence (§2.4.3). If another writer
//! changed the marker since, the server refuses the whole update (NXRRSET
//! or YXRRSET) and nothing is written: the compare-and-set that fences a
//! deposed leader (S4).

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use super::{Actual, Desired, Found, Lease, PublishError, Publisher};
use crate::config::{PublishConfig, PublishKind, Target, TsigAlgorithm};

/// How far the server's clock may be from ours (RFC 8945 recommends 300 s).
const TSIG_FUDGE: u16 = 300;

/// The largest response read over UDP.
const UDP_BUFFER: usize = 4096;

/// A primary server taking TSIG-signed updates for one zone.
pub struct Rfc2136 {
    /// `host:port` as configured, resolved at every exchange.
    server: String,
    zone: Name,
    signer: TSigner,
    key_name: String,
    timeout: Duration,
}

impl Rfc2136 {
    /// The publisher for an `rfc2136` target.
    pub fn new(target: &PublishConfig) -> Result<Rfc2136, String> {
        let PublishKind::Rfc2136 { server, tsig } = &target.kind else {
            return Err(format!("publish target {} is not rfc2136", target.name));
        };
        let zone = parse_name(&target.zone)?;
        let algorithm = match tsig.algorithm {
            TsigAlgorithm::HmacSha256 => hickory_proto::rr::rdata::tsig::TsigAlgorithm::HmacSha256,
            TsigAlgorithm::HmacSha512 => hickory_proto::rr::rdata::tsig::TsigAlgorithm::HmacSha512,
        };
        let signer = TSigner::new(
            tsig.secret.0.clone(),
            algorithm,
            parse_name(&tsig.name)?,
            TSIG_FUDGE,
        )
        .map_err(|e| format!("TSIG key {}: {e}", tsig.name))?;
        Ok(Rfc2136 {
            server: server.clone(),
            zone,
            signer,
            key_name: tsig.name.clone(),
            timeout: target.timeout,
        })
    }

    /// The records of `rtype` owned by `name`, as the server holds them.
    async fn query(&self, name: &Name, rtype: RecordType) -> Result<Vec<Record>, PublishError> {
        let mut message = Message::new(rand::random(), MessageType::Query, OpCode::Query);
        message.add_query(Query::query(name.clone(), rtype));
        let response = self.exchange(message, self.timeout).await?;
        match response.metadata.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => Ok(response
                .answers
                .into_iter()
                .filter(|r| r.record_type() == rtype && &r.name == name)
                .collect()),
            code => Err(PublishError::Refused(format!(
                "{} answered {} to a query for {name} {rtype}; it must be authoritative for {} and let key {} query it",
                self.server,
                rcode(code),
                self.zone,
                self.key_name
            ))),
        }
    }

    /// Sends `message` signed and returns the verified response, all
    /// within `timeout`: over UDP first, then over TCP (see the module doc).
    async fn exchange(
        &self,
        mut message: Message,
        timeout: Duration,
    ) -> Result<Message, PublishError> {
        // A timeout too long to add (config sets no upper bound) is no
        // deadline at all, in practice: a day.
        let deadline = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
        let address = tokio::time::timeout_at(deadline, self.resolve())
            .await
            .map_err(|_| {
                PublishError::Unreachable(format!(
                    "cannot resolve {} within {}",
                    self.server,
                    humantime::format_duration(timeout)
                ))
            })??;
        let mut verifier = message
            .finalize(&self.signer, unix_seconds())
            .map_err(|e| PublishError::Refused(format!("cannot sign the message: {e}")))?
            .ok_or_else(|| PublishError::Refused("signing produced no verifier".into()))?;
        let bytes = message
            .to_vec()
            .map_err(|e| PublishError::Refused(format!("cannot encode the message: {e}")))?;
        let udp_time = timeout / 2;
        let over_udp =
            tokio::time::timeout(udp_time, over_udp(address, message.metadata.id, &bytes)).await;
        let udp_failed = match over_udp {
            Ok(Ok(response)) if !is_truncated(&response) => {
                return self.verified(&mut verifier, &response);
            }
            Ok(Ok(_)) => "its answer over UDP was truncated".to_owned(),
            Ok(Err(error)) => format!("UDP failed ({error})"),
            Err(_) => format!(
                "no answer over UDP within {}",
                humantime::format_duration(udp_time)
            ),
        };
        let response = tokio::time::timeout_at(deadline, over_tcp(address, &bytes))
            .await
            .map_err(|_| {
                PublishError::Unreachable(format!(
                    "{} ({address}) did not answer within {}: {udp_failed}, and none over TCP in the time left",
                    self.server,
                    humantime::format_duration(timeout)
                ))
            })?
            .map_err(|error| {
                PublishError::Unreachable(format!(
                    "{} ({address}): {udp_failed}, and TCP failed too ({error})",
                    self.server
                ))
            })?;
        self.verified(&mut verifier, &response)
    }

    /// The response, if its signature checks out against the request's.
    fn verified(
        &self,
        verifier: &mut hickory_proto::rr::TSigVerifier,
        response: &[u8],
    ) -> Result<Message, PublishError> {
        match verifier.verify(response) {
            Ok(verified) => Ok(verified.into_message()),
            Err(error) => Err(self.unverified(response, &error.to_string())),
        }
    }

    /// Explains a response whose signature did not check out: usually the
    /// server rejecting our key (it then answers unsigned, NOTAUTH).
    fn unverified(&self, response: &[u8], error: &str) -> PublishError {
        let parsed = Message::from_vec(response).ok();
        let code = parsed.as_ref().map(|m| m.metadata.response_code);
        let tsig_error = parsed
            .as_ref()
            .and_then(|m| m.signature.as_ref())
            .and_then(|s| {
                s.data
                    .error
                    .as_ref()
                    .map(|e| format!("{e:?}").to_ascii_uppercase())
            });
        match (code, tsig_error) {
            (Some(code), Some(tsig_error)) => PublishError::Refused(format!(
                "{} rejected TSIG key {} with {}, TSIG error {tsig_error}; check that tsig_key, tsig_algorithm and the secret match a key the server has",
                self.server,
                self.key_name,
                rcode(code)
            )),
            (Some(code), None) if code != ResponseCode::NoError => PublishError::Refused(format!(
                "{} answered {} without a valid signature, which usually means it does not know TSIG key {} or its secret differs",
                self.server,
                rcode(code),
                self.key_name
            )),
            _ => PublishError::Refused(format!(
                "the response from {} failed TSIG verification ({error}); check the key's secret and algorithm",
                self.server
            )),
        }
    }

    async fn resolve(&self) -> Result<SocketAddr, PublishError> {
        tokio::net::lookup_host(&self.server)
            .await
            .map_err(|e| PublishError::Unreachable(format!("cannot resolve {}: {e}", self.server)))?
            .next()
            .ok_or_else(|| {
                PublishError::Unreachable(format!("{} resolves to no address", self.server))
            })
    }

    /// The update replacing what `actual` holds with `desired`, conditional
    /// on the marker being exactly as read.
    fn update(&self, desired: &Desired, actual: &Actual) -> Result<Message, PublishError> {
        let name = parse_name(&desired.name).map_err(PublishError::Refused)?;
        let marker = parse_name(&desired.marker_name()).map_err(PublishError::Refused)?;
        let mut message = Message::new(rand::random(), MessageType::Query, OpCode::Update);
        // Zone section (RFC 2136 §2.3): the zone's SOA, class IN.
        let mut zone = Query::query(self.zone.clone(), RecordType::SOA);
        zone.set_query_class(DNSClass::IN);
        message.add_query(zone);
        // Prerequisites (§2.4), in the answer section.
        if actual.markers.is_empty() {
            let mut absent = Record::update0(marker.clone(), 0, RecordType::TXT);
            absent.dns_class = DNSClass::NONE;
            message.answers.push(absent);
        }
        for found in &actual.markers {
            // The bytes exactly as read: a marker that is not UTF-8 must
            // still match itself, or the update would be refused forever.
            let strings = found.value.iter().map(Vec::as_slice).collect();
            message.answers.push(Record::from_rdata(
                marker.clone(),
                0,
                RData::TXT(TXT::from_bytes(strings)),
            ));
        }
        // Updates (§2.5), in the authority section: delete, then add.
        let delete = |owner: &Name, rtype| {
            let mut record = Record::update0(owner.clone(), 0, rtype);
            record.dns_class = DNSClass::ANY;
            record
        };
        message.authorities.push(delete(&marker, RecordType::TXT));
        message.authorities.push(Record::from_rdata(
            marker,
            desired.ttl,
            RData::TXT(TXT::new(desired.marker.strings())),
        ));
        for rtype in [RecordType::CNAME, RecordType::A, RecordType::AAAA] {
            message.authorities.push(delete(&name, rtype));
        }
        let data = match &desired.target {
            Target::Cname(to) => {
                RData::CNAME(CNAME(parse_name(to).map_err(PublishError::Refused)?))
            }
            Target::A(ip) => RData::A(A(*ip)),
            Target::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
        };
        message
            .authorities
            .push(Record::from_rdata(name, desired.ttl, data));
        Ok(message)
    }
}

#[async_trait]
impl Publisher for Rfc2136 {
    async fn read(&self, name: &str) -> Result<Actual, PublishError> {
        let owner = parse_name(name).map_err(PublishError::Refused)?;
        let marker = parse_name(&super::marker_name(name)).map_err(PublishError::Refused)?;
        let mut actual = Actual::default();
        for rtype in [RecordType::CNAME, RecordType::A, RecordType::AAAA] {
            for record in self.query(&owner, rtype).await? {
                let value = match record.data {
                    RData::CNAME(CNAME(to)) => Target::Cname(to.to_ascii().to_ascii_lowercase()),
                    RData::A(A(ip)) => Target::A(ip),
                    RData::AAAA(AAAA(ip)) => Target::Aaaa(ip),
                    _ => continue,
                };
                actual.records.push(Found {
                    value,
                    ttl: record.ttl,
                    id: None,
                });
            }
        }
        for record in self.query(&marker, RecordType::TXT).await? {
            if let RData::TXT(txt) = &record.data {
                let strings = txt.txt_data.iter().map(|s| s.to_vec()).collect();
                actual.markers.push(Found {
                    value: strings,
                    ttl: record.ttl,
                    id: None,
                });
            }
        }
        Ok(actual)
    }

    async fn write(
        &self,
        desired: &Desired,
        actual: &Actual,
        lease: &dyn Lease,
    ) -> Result<(), PublishError> {
        // The update is a compare-and-set, so the lease is not what fences
        // it; checking it anyway spares the server a doomed update.
        if lease.left().is_none() {
            return Err(PublishError::Deposed(format!(
                "did not update {}: this node no longer leads",
                desired.name
            )));
        }
        let update = self.update(desired, actual)?;
        let response = self.exchange(update, self.timeout).await?;
        let code = response.metadata.response_code;
        let (server, name) = (&self.server, &desired.name);
        match code {
            ResponseCode::NoError => Ok(()),
            ResponseCode::NXRRSet | ResponseCode::YXRRSet => Err(PublishError::Conflict(format!(
                "{server} refused the update of {name} with {}: its marker changed since it was read, so another writer got there first",
                rcode(code)
            ))),
            ResponseCode::Refused | ResponseCode::NotAuth => Err(PublishError::Refused(format!(
                "{server} refused the update of {name} with {}; its update-policy must grant key {} the names {name} and {} (TXT, CNAME, A, AAAA)",
                rcode(code),
                self.key_name,
                desired.marker_name()
            ))),
            ResponseCode::NotZone => Err(PublishError::Refused(format!(
                "{server} answered {}: {name} is not in zone {}",
                rcode(code),
                self.zone
            ))),
            ResponseCode::ServFail => Err(PublishError::Unreachable(format!(
                "{server} failed the update of {name} with {}",
                rcode(code)
            ))),
            _ => Err(PublishError::Refused(format!(
                "{server} answered {} to the update of {name}",
                rcode(code)
            ))),
        }
    }
}

/// Sends `bytes` to `address` over UDP and returns the answer to `id`.
async fn over_udp(address: SocketAddr, id: u16, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if address.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(address).await?;
    socket.send(bytes).await?;
    let mut buffer = vec![0u8; UDP_BUFFER];
    loop {
        let n = socket.recv(&mut buffer).await?;
        // A datagram for another query (a late answer to a retry) is skipped.
        if n >= 12 && u16::from_be_bytes([buffer[0], buffer[1]]) == id {
            buffer.truncate(n);
            return Ok(buffer);
        }
    }
}

/// Sends `bytes` to `address` over TCP (length-prefixed) and returns the answer.
async fn over_tcp(address: SocketAddr, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let length = u16::try_from(bytes.len()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the message is too long for TCP",
        )
    })?;
    let mut stream = TcpStream::connect(address).await?;
    let mut framed = length.to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await?;
    let length = stream.read_u16().await?;
    let mut response = vec![0u8; usize::from(length)];
    stream.read_exact(&mut response).await?;
    Ok(response)
}

/// A response code as `NXRRSET (RR Set does not exist)`: the mnemonic
/// operators search for, and hickory's description.
fn rcode(code: ResponseCode) -> String {
    format!("{} ({code})", format!("{code:?}").to_ascii_uppercase())
}

fn parse_name(name: &str) -> Result<Name, String> {
    Name::from_str(name).map_err(|e| format!("{name:?} is not a domain name: {e}"))
}

/// Whether a raw response has the TC bit set.
fn is_truncated(response: &[u8]) -> bool {
    response.get(2).is_some_and(|flags| flags & 0x02 != 0)
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::config::{Secret, TsigKey};
    use crate::dns::publish::Marker;

    fn publisher() -> Rfc2136 {
        let target = PublishConfig {
            name: "ns1".into(),
            kind: PublishKind::Rfc2136 {
                server: "192.0.2.53:53".into(),
                tsig: TsigKey {
                    name: "highlander.".into(),
                    algorithm: TsigAlgorithm::HmacSha256,
                    secret_file: "highlander.key".into(),
                    secret: Secret(vec![7; 32]),
                },
            },
            services: vec!["db".into()],
            zone: "example.com.".into(),
            record: "{service}.example.com.".into(),
            ttl: Duration::from_secs(30),
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        };
        Rfc2136::new(&target).expect("an rfc2136 publisher")
    }

    #[test]
    fn the_prerequisite_names_a_marker_byte_for_byte_even_if_not_utf8() {
        let read = vec![b"instance=db1\xff".to_vec(), b"epoch=1".to_vec()];
        let actual = Actual {
            records: Vec::new(),
            markers: vec![Found {
                value: read.clone(),
                ttl: 30,
                id: None,
            }],
        };
        let desired = Desired {
            service: "db".into(),
            name: "db.example.com.".into(),
            target: Target::A(Ipv4Addr::new(192, 0, 2, 1)),
            ttl: 30,
            marker: Marker {
                instance: "db1".into(),
                epoch: 2,
            },
        };
        let update = publisher().update(&desired, &actual).expect("an update");
        let prerequisites: Vec<Vec<Vec<u8>>> = update
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(txt) => Some(txt.txt_data.iter().map(|s| s.to_vec()).collect()),
                _ => None,
            })
            .collect();
        assert_eq!(prerequisites, [read]);
    }
}
