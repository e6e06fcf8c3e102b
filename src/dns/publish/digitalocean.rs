//! The DigitalOcean v2 domain records API
//! (<https://docs.digitalocean.com/reference/api/api-reference/#tag/Domain-Records>).
//!
//! This module only spells records the way DigitalOcean does: the domain is
//! the zone without its trailing dot, a record's `name` is relative to it
//! (`db`, or `@` for the apex), a CNAME's `data` is a full name with its
//! trailing dot, and ids are numbers. Reading, the write plan and the error
//! mapping are [`super::http`]'s, shared with Cloudflare.
//!
//! Listings are followed page by page by number: `links.pages.next` only
//! says that there is a next page; its URL is not fetched, so the token is
//! never sent anywhere but `base_url`.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use super::PublishError;
use super::http::{self, Api, Listed, Page, RecordApi, Wanted};
use crate::config::{PublishConfig, PublishKind};

/// The most records one listing page asks for (the API's maximum).
const PER_PAGE: &str = "200";

/// A DigitalOcean domain holding a target's zone.
pub struct DigitalOcean {
    api: Api,
    /// The zone, absolute and lowercase (`example.com.`).
    zone: String,
    /// The zone as DigitalOcean names the domain (`example.com`).
    domain: String,
}

impl DigitalOcean {
    /// The publisher for a `digitalocean` target.
    pub fn new(target: &PublishConfig) -> Result<DigitalOcean, String> {
        let PublishKind::DigitalOcean { base_url, token } = &target.kind else {
            return Err(format!(
                "publish target {} is not digitalocean",
                target.name
            ));
        };
        let domain = http::without_dot(&target.zone).to_owned();
        let permission = format!(
            "allowed to read and write domain {domain} (a full-access token, or the custom scopes domain:read, domain:create, domain:update and domain:delete)"
        );
        Ok(DigitalOcean {
            api: Api::new("DigitalOcean", base_url, token, target.timeout, permission)?,
            zone: target.zone.clone(),
            domain,
        })
    }
}

#[async_trait]
impl RecordApi for DigitalOcean {
    fn api(&self) -> &Api {
        &self.api
    }

    async fn records_path(&self) -> Result<String, PublishError> {
        Ok(format!("/v2/domains/{}/records", self.domain))
    }

    fn per_page(&self) -> &'static str {
        PER_PAGE
    }

    fn page(&self, what: &str, body: &[u8]) -> Result<Page<Listed>, PublishError> {
        parse_page(body, &self.zone).map_err(|e| self.api.malformed(what, &e))
    }

    fn body(&self, record: &Wanted) -> serde_json::Value {
        json!({
            "type": record.rtype,
            "name": relative_name(&record.name, &self.zone),
            "data": record.content,
            "ttl": record.ttl,
        })
    }

    fn missing_zone(&self) -> String {
        format!(
            "check that the domain {} exists in the DigitalOcean account of the {}",
            self.domain,
            self.api.token_source()
        )
    }
}

/// `GET …/records` as documented.
#[derive(Debug, Deserialize)]
struct RecordList {
    domain_records: Vec<DomainRecord>,
    #[serde(default)]
    links: Links,
    #[serde(default)]
    meta: Option<Meta>,
}

#[derive(Debug, Default, Deserialize)]
struct Links {
    #[serde(default)]
    pages: Option<Pages>,
}

#[derive(Debug, Deserialize)]
struct Pages {
    #[serde(default)]
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Meta {
    total: u64,
}

#[derive(Debug, Deserialize)]
struct DomainRecord {
    id: u64,
    #[serde(rename = "type")]
    rtype: String,
    name: String,
    #[serde(default)]
    data: String,
    #[serde(default)]
    ttl: u32,
}

/// One page of a listing, in highlander's spelling.
fn parse_page(body: &[u8], zone: &str) -> Result<Page<Listed>, serde_json::Error> {
    let list: RecordList = serde_json::from_slice(body)?;
    Ok(Page {
        more: list.links.pages.is_some_and(|p| p.next.is_some()),
        total: list.meta.map(|m| m.total),
        items: list
            .domain_records
            .into_iter()
            .map(|r| {
                let content = if r.rtype == "CNAME" {
                    cname_target(&r.data, zone)
                } else {
                    r.data
                };
                Listed {
                    id: r.id.to_string(),
                    name: absolute_name(&r.name, zone),
                    rtype: r.rtype,
                    content,
                    ttl: r.ttl,
                }
            })
            .collect(),
    })
}

/// A record's `name` as DigitalOcean writes it: relative to the zone, `@`
/// for the apex. `name` is absolute and inside `zone` (config checks it).
pub fn relative_name(name: &str, zone: &str) -> String {
    if name == zone {
        return "@".to_owned();
    }
    name.strip_suffix(zone)
        .and_then(|label| label.strip_suffix('.'))
        .unwrap_or(name)
        .to_owned()
}

/// A record's `name` as listed (relative, or `@`), made absolute.
pub fn absolute_name(listed: &str, zone: &str) -> String {
    let listed = listed.to_ascii_lowercase();
    if listed == "@" || listed.is_empty() {
        zone.to_owned()
    } else if listed.ends_with('.') {
        listed
    } else {
        format!("{listed}.{zone}")
    }
}

/// A CNAME's `data` made absolute: `@` is the apex, and a name without its
/// trailing dot is taken as full (the API accepts both spellings).
pub fn cname_target(data: &str, zone: &str) -> String {
    if data == "@" {
        zone.to_owned()
    } else {
        http::absolute(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_convert_between_absolute_and_relative() {
        let zone = "example.com.";
        assert_eq!(relative_name("db.example.com.", zone), "db");
        assert_eq!(
            relative_name("_highlander.db.prod.example.com.", zone),
            "_highlander.db.prod"
        );
        assert_eq!(relative_name("example.com.", zone), "@");
        assert_eq!(absolute_name("db", zone), "db.example.com.");
        assert_eq!(
            absolute_name("_highlander.DB", zone),
            "_highlander.db.example.com."
        );
        assert_eq!(absolute_name("@", zone), "example.com.");
        for name in ["db.example.com.", "a.b.example.com.", "example.com."] {
            assert_eq!(absolute_name(&relative_name(name, zone), zone), name);
        }
    }

    #[test]
    fn a_listing_page_reads_ids_names_and_data() {
        let body = br#"{
          "domain_records": [
            {"id": 28448433, "type": "A", "name": "db", "data": "192.0.2.1", "priority": null, "port": null, "ttl": 30, "weight": null, "flags": null, "tag": null},
            {"id": 28448434, "type": "CNAME", "name": "www", "data": "Db2.Internal.Example.", "ttl": 1800},
            {"id": 28448435, "type": "CNAME", "name": "api", "data": "@", "ttl": 1800},
            {"id": 28448436, "type": "TXT", "name": "_highlander.db", "data": "instance=db1 epoch=3", "ttl": 30}
          ],
          "links": {"pages": {"first": "https://api.digitalocean.com/v2/domains/example.com/records?page=1", "next": "https://api.digitalocean.com/v2/domains/example.com/records?page=2"}},
          "meta": {"total": 6}
        }"#;
        let page = parse_page(body, "example.com.").expect("a documented page");
        assert!(page.more);
        assert_eq!(page.total, Some(6));
        let listed: Vec<(&str, &str, &str, &str, u32)> = page
            .items
            .iter()
            .map(|l| {
                (
                    l.id.as_str(),
                    l.rtype.as_str(),
                    l.name.as_str(),
                    l.content.as_str(),
                    l.ttl,
                )
            })
            .collect();
        assert_eq!(
            listed,
            [
                ("28448433", "A", "db.example.com.", "192.0.2.1", 30),
                (
                    "28448434",
                    "CNAME",
                    "www.example.com.",
                    "db2.internal.example.",
                    1800
                ),
                (
                    "28448435",
                    "CNAME",
                    "api.example.com.",
                    "example.com.",
                    1800
                ),
                (
                    "28448436",
                    "TXT",
                    "_highlander.db.example.com.",
                    "instance=db1 epoch=3",
                    30
                ),
            ]
        );
    }

    #[test]
    fn the_last_page_has_no_next_link() {
        let body = br#"{"domain_records": [], "links": {}, "meta": {"total": 0}}"#;
        let page = parse_page(body, "example.com.").expect("a documented page");
        assert!(!page.more);
        assert!(page.items.is_empty());
        assert!(parse_page(b"{\"records\": []}", "example.com.").is_err());
    }
}
