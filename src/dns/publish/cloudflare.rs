//! The Cloudflare v4 DNS records API
//! (<https://developers.cloudflare.com/api/resources/dns/subresources/records/>).
//!
//! This module only spells records the way Cloudflare does: names are full
//! and without a trailing dot, so is a CNAME's `content`, a TXT's `content`
//! may come back in quotes, and every answer is wrapped in an envelope
//! (`success`, `errors`, `result`, `result_info`). The zone's id is looked
//! up by name once, when the config does not give it. Reading, the write
//! plan and the error mapping are [`super::http`]'s, shared with
//! DigitalOcean.
//!
//! Records are written unproxied: a proxied record answers Cloudflare's
//! addresses, not the active instance. A record someone proxied by hand
//! reads back with TTL 1 ("automatic"), never the desired TTL, so it is
//! repaired like any other edit.

use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::OnceCell;

use super::PublishError;
use super::http::{self, Api, Listed, Page, RecordApi, Reply, Wanted};
use crate::config::{PublishConfig, PublishKind};

/// The records one listing page asks for (the API's default).
const PER_PAGE: &str = "100";

/// A Cloudflare zone holding a target's zone.
pub struct Cloudflare {
    api: Api,
    /// The zone as Cloudflare names it (`example.com`).
    zone_name: String,
    /// Given by the config, or looked up at the first request and kept:
    /// a zone's id does not change while it exists.
    zone_id: OnceCell<String>,
}

impl Cloudflare {
    /// The publisher for a `cloudflare` target.
    pub fn new(target: &PublishConfig) -> Result<Cloudflare, String> {
        let PublishKind::Cloudflare {
            base_url,
            zone_id,
            token,
        } = &target.kind
        else {
            return Err(format!("publish target {} is not cloudflare", target.name));
        };
        let zone_name = http::without_dot(&target.zone).to_owned();
        let mut permission = format!("granted Zone → DNS → Edit on the zone {zone_name}");
        if zone_id.is_none() {
            permission.push_str(" and Zone → Zone → Read to look its id up (or set zone_id)");
        }
        Ok(Cloudflare {
            api: Api::new("Cloudflare", base_url, token, target.timeout, permission)?,
            zone_name,
            zone_id: OnceCell::new_with(zone_id.clone()),
        })
    }

    /// The zone's id, looked up by name the first time it is needed.
    async fn zone_id(&self) -> Result<&str, PublishError> {
        self.zone_id
            .get_or_try_init(|| self.find_zone())
            .await
            .map(String::as_str)
    }

    async fn find_zone(&self) -> Result<String, PublishError> {
        let what = format!("look up the id of zone {}", self.zone_name);
        let query = [("name", self.zone_name.as_str())];
        let body = match self
            .api
            .call(Method::GET, "/zones", &query, None, &what)
            .await?
        {
            Reply::Ok(body) => body,
            Reply::NotFound(body) => {
                return Err(self.api.not_found(&what, &body, "check base_url"));
            }
        };
        let zones: Vec<Zone> = self.result(&what, &body)?.result.unwrap_or_default();
        let zone = zones
            .into_iter()
            .find(|z| z.name.eq_ignore_ascii_case(&self.zone_name))
            .ok_or_else(|| {
                PublishError::Refused(format!(
                    "cannot {what}: {} lists no zone named {} to the {}; check the zone's name, that the token is granted Zone → Zone → Read on it, or set zone_id",
                    self.api.label(),
                    self.zone_name,
                    self.api.token_source()
                ))
            })?;
        // It goes into every later request's path.
        http::path_id(&self.api, &zone.id)?;
        Ok(zone.id)
    }

    /// A 2xx envelope, refused when it says `success: false`.
    fn result<T: DeserializeOwned>(
        &self,
        what: &str,
        body: &[u8],
    ) -> Result<Envelope<T>, PublishError> {
        let envelope: Envelope<T> =
            serde_json::from_slice(body).map_err(|e| self.api.malformed(what, &e))?;
        if envelope.success {
            Ok(envelope)
        } else {
            Err(PublishError::Refused(format!(
                "{} did not {what} ({})",
                self.api.label(),
                self.api.api_says(reqwest::StatusCode::OK, body)
            )))
        }
    }
}

#[async_trait]
impl RecordApi for Cloudflare {
    fn api(&self) -> &Api {
        &self.api
    }

    async fn records_path(&self) -> Result<String, PublishError> {
        Ok(format!("/zones/{}/dns_records", self.zone_id().await?))
    }

    fn per_page(&self) -> &'static str {
        PER_PAGE
    }

    fn page(&self, what: &str, body: &[u8]) -> Result<Page<Listed>, PublishError> {
        Ok(page_of(self.result(what, body)?))
    }

    fn body(&self, record: &Wanted) -> serde_json::Value {
        json!({
            "type": record.rtype,
            "name": http::without_dot(&record.name),
            "content": content(record),
            "ttl": record.ttl,
            "proxied": false,
        })
    }

    fn accepted(&self, what: &str, body: &[u8]) -> Result<(), PublishError> {
        self.result::<serde_json::Value>(what, body).map(|_| ())
    }

    fn missing_zone(&self) -> String {
        format!(
            "check that the zone {} (or zone_id) exists in the Cloudflare account of the {}",
            self.zone_name,
            self.api.token_source()
        )
    }
}

/// A record's `content` as Cloudflare writes it.
fn content(record: &Wanted) -> String {
    if record.rtype == "CNAME" {
        http::without_dot(&record.content).to_owned()
    } else {
        record.content.clone()
    }
}

/// Every Cloudflare answer's wrapper.
#[derive(Debug, Deserialize)]
struct Envelope<T> {
    #[serde(default)]
    success: bool,
    result: Option<T>,
    result_info: Option<ResultInfo>,
}

#[derive(Debug, Deserialize)]
struct ResultInfo {
    page: u32,
    #[serde(default)]
    total_pages: Option<u32>,
    #[serde(default)]
    total_count: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Zone {
    id: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct DnsRecord {
    id: String,
    #[serde(rename = "type")]
    rtype: String,
    name: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    ttl: u32,
}

/// One page of a listing, in highlander's spelling.
fn page_of(envelope: Envelope<Vec<DnsRecord>>) -> Page<Listed> {
    let (more, total) = match &envelope.result_info {
        Some(info) => (
            info.total_pages.is_some_and(|pages| info.page < pages),
            info.total_count,
        ),
        None => (false, None),
    };
    let items = envelope
        .result
        .unwrap_or_default()
        .into_iter()
        .map(|r| Listed {
            content: match r.rtype.as_str() {
                "CNAME" => http::absolute(&r.content),
                "TXT" => unquoted(&r.content),
                _ => r.content,
            },
            id: r.id,
            name: http::absolute(&r.name),
            rtype: r.rtype,
            ttl: r.ttl,
        })
        .collect();
    Page { items, more, total }
}

/// A TXT's content without the quotes Cloudflare may return it in.
fn unquoted(content: &str) -> String {
    content
        .strip_prefix('"')
        .and_then(|c| c.strip_suffix('"'))
        .unwrap_or(content)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(body: &[u8]) -> Page<Listed> {
        page_of(serde_json::from_slice(body).expect("a documented envelope"))
    }

    #[test]
    fn a_listing_page_reads_full_names_and_content() {
        let listed = page(
            br#"{
              "success": true, "errors": [], "messages": [],
              "result": [
                {"id": "372e67954025e0ba6aaa6d586b9e0b59", "type": "CNAME", "name": "db.example.com", "content": "DB2.internal.example", "proxied": false, "ttl": 30},
                {"id": "372e67954025e0ba6aaa6d586b9e0b60", "type": "AAAA", "name": "db.example.com", "content": "2001:db8::2", "proxied": true, "ttl": 1},
                {"id": "372e67954025e0ba6aaa6d586b9e0b61", "type": "TXT", "name": "_highlander.db.example.com", "content": "\"instance=db2 epoch=7\"", "ttl": 30}
              ],
              "result_info": {"page": 1, "per_page": 3, "count": 3, "total_count": 5, "total_pages": 2}
            }"#,
        );
        assert!(listed.more);
        assert_eq!(listed.total, Some(5));
        let items: Vec<(&str, &str, &str, u32)> = listed
            .items
            .iter()
            .map(|l| (l.rtype.as_str(), l.name.as_str(), l.content.as_str(), l.ttl))
            .collect();
        assert_eq!(
            items,
            [
                ("CNAME", "db.example.com.", "db2.internal.example.", 30),
                ("AAAA", "db.example.com.", "2001:db8::2", 1),
                (
                    "TXT",
                    "_highlander.db.example.com.",
                    "instance=db2 epoch=7",
                    30
                ),
            ]
        );
        assert_eq!(listed.items[0].id, "372e67954025e0ba6aaa6d586b9e0b59");
    }

    #[test]
    fn the_last_page_says_so() {
        let last = page(
            br#"{"success": true, "errors": [], "result": [], "result_info": {"page": 2, "per_page": 3, "count": 0, "total_count": 3, "total_pages": 2}}"#,
        );
        assert!(!last.more);
        assert!(last.items.is_empty());
    }

    #[test]
    fn txt_content_is_read_with_or_without_quotes() {
        assert_eq!(unquoted("\"instance=db2 epoch=7\""), "instance=db2 epoch=7");
        assert_eq!(unquoted("instance=db2 epoch=7"), "instance=db2 epoch=7");
        assert_eq!(unquoted("\""), "\"");
    }

    #[test]
    fn cname_content_is_written_without_the_trailing_dot() {
        let record = Wanted {
            name: "db.example.com.".into(),
            rtype: "CNAME",
            content: "db2.internal.example.".into(),
            ttl: 30,
        };
        assert_eq!(content(&record), "db2.internal.example");
        let a = Wanted {
            rtype: "A",
            content: "192.0.2.1".into(),
            ..record
        };
        assert_eq!(content(&a), "192.0.2.1");
    }
}
