//! Local fakes of the DigitalOcean v2 domain records API and the Cloudflare
//! v4 DNS records API, written from their public documentation, so the HTTP
//! publishers can be tested against real HTTP on 127.0.0.1:0.
//!
//! One zone, held in memory. Each fake checks the bearer token (401 in the
//! API's own error shape), paginates listings with a small page size (so
//! every listing that matters spans pages), refuses what the real API
//! refuses that highlander could get wrong (a CNAME beside another record, a
//! TTL under the minimum, a name outside the zone), and answers 429 with
//! `Retry-After` when the test asks it to. Tests can also change records
//! behind highlander's back, have the fake refuse writes at a name or stall
//! its answers to writes, and read what the fake holds and when each request
//! arrived.
//!
//! Records are held in highlander's spelling (absolute names, a CNAME's
//! target ending in a dot, TXT unquoted) and converted at the API's edge,
//! so tests compare the same way against both.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Which API the fake speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    DigitalOcean,
    Cloudflare,
}

impl Flavour {
    /// The `kind` of a `[[publish]]` target for this API.
    pub fn kind(self) -> &'static str {
        match self {
            Flavour::DigitalOcean => "digitalocean",
            Flavour::Cloudflare => "cloudflare",
        }
    }
}

/// One record the fake holds, in highlander's spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeRecord {
    pub id: String,
    pub rtype: String,
    /// Absolute and lowercase.
    pub name: String,
    /// A CNAME's target ends in a dot; TXT without quotes.
    pub content: String,
    pub ttl: u32,
}

/// The smallest TTL the fakes take (the documented minimum of both).
const MIN_TTL: u64 = 30;

/// How many records a listing page holds at most, whatever `per_page`
/// asks for: small, so pagination is always exercised.
const PAGE_SIZE: usize = 2;

/// The Cloudflare zone id the fake answers to.
pub const CLOUDFLARE_ZONE_ID: &str = "023e105f4ecef8ad9ca31a8372d0c353";

/// What the fake holds and how it behaves; shared by the handlers and the test.
struct Store {
    flavour: Flavour,
    /// Absolute (`example.com.`).
    zone: String,
    token: String,
    records: Vec<FakeRecord>,
    next_id: u64,
    page_size: usize,
    /// Answer 429 to this many more requests.
    rate_limited: usize,
    retry_after: u64,
    /// Names (absolute) whose records the fake refuses to create or update.
    refused_names: Vec<String>,
    /// How long the fake takes before answering a request that is not a GET.
    write_delay: Duration,
    /// Every request, as method, path and arrival time, in order.
    requests: Vec<(Method, String, Instant)>,
}

type Shared = Arc<Mutex<Store>>;

/// A fake DNS API on a free loopback port; stops when dropped.
pub struct FakeDnsApi {
    pub flavour: Flavour,
    /// What `base_url` is set to for this fake.
    pub base_url: String,
    store: Shared,
    server: JoinHandle<()>,
}

impl Drop for FakeDnsApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeDnsApi {
    /// A fake holding `zone` (absolute), accepting only `token`.
    pub async fn start(flavour: Flavour, zone: &str, token: &str) -> Result<FakeDnsApi> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let store = Arc::new(Mutex::new(Store {
            flavour,
            zone: zone.to_owned(),
            token: token.to_owned(),
            records: Vec::new(),
            next_id: 1,
            page_size: PAGE_SIZE,
            rate_limited: 0,
            retry_after: 1,
            refused_names: Vec::new(),
            write_delay: Duration::ZERO,
            requests: Vec::new(),
        }));
        let (routes, base_url) = match flavour {
            Flavour::DigitalOcean => (
                Router::new()
                    .route("/v2/domains/{domain}/records", get(do_list).post(do_create))
                    .route(
                        "/v2/domains/{domain}/records/{id}",
                        put(do_update).delete(do_delete),
                    ),
                format!("http://{addr}"),
            ),
            Flavour::Cloudflare => (
                // Under the same path prefix as the real API, so base_url's
                // path is exercised too.
                Router::new().nest(
                    "/client/v4",
                    Router::new()
                        .route("/zones", get(cf_zones))
                        .route("/zones/{zone}/dns_records", get(cf_list).post(cf_create))
                        .route(
                            "/zones/{zone}/dns_records/{id}",
                            put(cf_update).delete(cf_delete),
                        ),
                ),
                format!("http://{addr}/client/v4"),
            ),
        };
        let app = routes
            .layer(middleware::from_fn_with_state(store.clone(), gate))
            .with_state(store.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeDnsApi {
            flavour,
            base_url,
            store,
            server,
        })
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        lock(&self.store)
    }

    /// Every record in the zone.
    pub fn records(&self) -> Vec<FakeRecord> {
        self.store().records.clone()
    }

    /// The records at `name` (absolute), of every type.
    pub fn at(&self, name: &str) -> Vec<FakeRecord> {
        self.records()
            .into_iter()
            .filter(|r| r.name == name)
            .collect()
    }

    /// Adds a record behind highlander's back; returns its id.
    pub fn add(&self, rtype: &str, name: &str, content: &str, ttl: u32) -> String {
        let mut store = self.store();
        store.insert(rtype, name, content, ttl)
    }

    /// Changes a record's content behind highlander's back.
    pub fn edit(&self, id: &str, content: &str) {
        let mut store = self.store();
        let record = store
            .records
            .iter_mut()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("the fake holds no record {id}"));
        record.content = content.to_owned();
    }

    /// Answers the next `requests` requests with 429 and `Retry-After: seconds`.
    pub fn rate_limit(&self, requests: usize, seconds: u64) {
        let mut store = self.store();
        store.rate_limited = requests;
        store.retry_after = seconds;
    }

    /// Refuses every later create or update of a record at `name`
    /// (absolute), as the API refuses a record it finds invalid.
    pub fn refuse_writes_at(&self, name: &str) {
        self.store().refused_names.push(name.to_owned());
    }

    /// Holds every later answer to a request other than a GET for `delay`.
    pub fn delay_writes(&self, delay: Duration) {
        self.store().write_delay = delay;
    }

    /// How many requests of `method` the fake has had (429s and 401s included).
    pub fn count(&self, method: &str) -> usize {
        self.store()
            .requests
            .iter()
            .filter(|(m, _, _)| m.as_str() == method)
            .count()
    }

    /// When each request arrived, in order.
    pub fn arrivals(&self) -> Vec<Instant> {
        self.store().requests.iter().map(|(_, _, at)| *at).collect()
    }

    /// How many requests changed something: POST, PUT, PATCH and DELETE.
    pub fn writes(&self) -> usize {
        ["POST", "PUT", "PATCH", "DELETE"]
            .into_iter()
            .map(|m| self.count(m))
            .sum()
    }

    /// How many requests went to exactly `path` (below the base URL's host).
    pub fn count_path(&self, path: &str) -> usize {
        self.store()
            .requests
            .iter()
            .filter(|(_, p, _)| p == path)
            .count()
    }

    /// Every request so far.
    pub fn requests(&self) -> usize {
        self.store().requests.len()
    }
}

impl Store {
    fn insert(&mut self, rtype: &str, name: &str, content: &str, ttl: u32) -> String {
        let id = match self.flavour {
            Flavour::DigitalOcean => (28_448_000 + self.next_id).to_string(),
            Flavour::Cloudflare => format!("{:032x}", 0x372e_6795_4025_e0ba_u64 + self.next_id),
        };
        self.next_id += 1;
        self.records.push(FakeRecord {
            id: id.clone(),
            rtype: rtype.to_owned(),
            name: name.to_owned(),
            content: content.to_owned(),
            ttl,
        });
        id
    }

    /// Why the real API would refuse `record` (replacing record `id`, if any).
    fn refuse(&self, record: &FakeRecord, replacing: Option<&str>) -> Option<String> {
        let at_zone = record.name == self.zone || record.name.ends_with(&format!(".{}", self.zone));
        if !at_zone {
            return Some(format!(
                "Name {} is not in the zone {}",
                record.name, self.zone
            ));
        }
        if self.refused_names.contains(&record.name) {
            return Some(format!(
                "Records at {} are refused by the test",
                record.name
            ));
        }
        let content_ok = match record.rtype.as_str() {
            "A" => record.content.parse::<Ipv4Addr>().is_ok(),
            "AAAA" => record.content.parse::<Ipv6Addr>().is_ok(),
            "CNAME" => record.content.ends_with('.'),
            "TXT" => !record.content.is_empty(),
            _ => false,
        };
        if !content_ok {
            return Some(format!(
                "Data {:?} is not valid for a {} record",
                record.content, record.rtype
            ));
        }
        let auto = self.flavour == Flavour::Cloudflare && record.ttl == 1;
        if !auto && u64::from(record.ttl) < MIN_TTL {
            return Some(format!("Ttl must be at least {MIN_TTL}"));
        }
        let others = self
            .records
            .iter()
            .filter(|r| r.name == record.name && Some(r.id.as_str()) != replacing);
        for other in others {
            let address_types = ["A", "AAAA", "CNAME"];
            let clash = (record.rtype == "CNAME" || other.rtype == "CNAME")
                && address_types.contains(&other.rtype.as_str())
                && address_types.contains(&record.rtype.as_str());
            if clash {
                return Some(format!(
                    "A CNAME cannot share the name {} with another A, AAAA or CNAME record",
                    record.name
                ));
            }
        }
        None
    }

    /// Creates `record` as the API would, or says why it refuses.
    fn create(&mut self, record: FakeRecord) -> Result<FakeRecord, String> {
        if let Some(why) = self.refuse(&record, None) {
            return Err(why);
        }
        let id = self.insert(&record.rtype, &record.name, &record.content, record.ttl);
        Ok(FakeRecord { id, ..record })
    }

    /// Replaces record `id` with `record`: `Ok(None)` if there is no such
    /// record, `Err` if the API would refuse the new one.
    fn replace(&mut self, id: &str, record: FakeRecord) -> Result<Option<FakeRecord>, String> {
        if !self.records.iter().any(|r| r.id == id) {
            return Ok(None);
        }
        let record = FakeRecord {
            id: id.to_owned(),
            ..record
        };
        if let Some(why) = self.refuse(&record, Some(id)) {
            return Err(why);
        }
        for held in self.records.iter_mut().filter(|r| r.id == id) {
            *held = record.clone();
        }
        Ok(Some(record))
    }

    /// Deletes record `id`; whether there was one.
    fn remove(&mut self, id: &str) -> bool {
        let before = self.records.len();
        self.records.retain(|r| r.id != id);
        self.records.len() < before
    }

    /// The records at `name` (the API's full name, no dot) of `rtype`.
    fn matching(&self, name: Option<&str>, rtype: Option<&str>) -> Vec<FakeRecord> {
        self.records
            .iter()
            .filter(|r| name.is_none_or(|n| r.name.trim_end_matches('.') == n.to_ascii_lowercase()))
            .filter(|r| rtype.is_none_or(|t| r.rtype == t))
            .cloned()
            .collect()
    }

    /// A page of `items`: 1-based `page`, at most `per_page` and the fake's page size.
    fn page(
        &self,
        items: &[FakeRecord],
        page: usize,
        per_page: usize,
    ) -> (Vec<FakeRecord>, usize, usize) {
        let per_page = per_page.clamp(1, self.page_size);
        let pages = items.len().div_ceil(per_page).max(1);
        let start = (page.max(1) - 1) * per_page;
        let slice = items.iter().skip(start).take(per_page).cloned().collect();
        (slice, per_page, pages)
    }
}

/// Counts, rate-limits and authenticates every request, as both APIs do.
async fn gate(State(store): State<Shared>, request: Request, next: Next) -> Response {
    let (flavour, refusal, delay) = {
        let mut store = lock(&store);
        store.requests.push((
            request.method().clone(),
            request.uri().path().to_owned(),
            Instant::now(),
        ));
        let delay = if request.method() == Method::GET {
            Duration::ZERO
        } else {
            store.write_delay
        };
        let expected = format!("Bearer {}", store.token);
        let given = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let refusal = if store.rate_limited > 0 {
            store.rate_limited -= 1;
            Some((StatusCode::TOO_MANY_REQUESTS, store.retry_after))
        } else if given != Some(expected.as_str()) {
            Some((StatusCode::UNAUTHORIZED, 0))
        } else {
            None
        };
        (store.flavour, refusal, delay)
    };
    tokio::time::sleep(delay).await;
    match refusal {
        None => next.run(request).await,
        Some((StatusCode::TOO_MANY_REQUESTS, retry_after)) => {
            let body = match flavour {
                Flavour::DigitalOcean => do_error("too_many_requests", "API Rate limit exceeded."),
                Flavour::Cloudflare => cf_error(
                    971,
                    "Please wait and consider throttling your request speed",
                ),
            };
            let mut response = (StatusCode::TOO_MANY_REQUESTS, body).into_response();
            response.headers_mut().insert(
                "retry-after",
                retry_after.to_string().parse().expect("a header"),
            );
            response
        }
        Some(_) => {
            let body = match flavour {
                Flavour::DigitalOcean => do_error("unauthorized", "Unable to authenticate you"),
                Flavour::Cloudflare => cf_error(10000, "Authentication error"),
            };
            (StatusCode::UNAUTHORIZED, body).into_response()
        }
    }
}

fn lock(store: &Shared) -> std::sync::MutexGuard<'_, Store> {
    store.lock().unwrap_or_else(|e| e.into_inner())
}

fn number(query: &HashMap<String, String>, key: &str, default: usize) -> usize {
    query
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------- DigitalOcean

fn do_error(id: &str, message: &str) -> axum::Json<Value> {
    axum::Json(json!({ "id": id, "message": message }))
}

fn do_not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        do_error(
            "not_found",
            "The resource you were accessing could not be found.",
        ),
    )
        .into_response()
}

fn do_record(record: &FakeRecord, zone: &str) -> Value {
    let name = if record.name == zone {
        "@".to_owned()
    } else {
        record
            .name
            .strip_suffix(&format!(".{zone}"))
            .unwrap_or(&record.name)
            .to_owned()
    };
    json!({
        "id": record.id.parse::<u64>().unwrap_or_default(),
        "type": record.rtype,
        "name": name,
        "data": record.content,
        "priority": null,
        "port": null,
        "ttl": record.ttl,
        "weight": null,
        "flags": null,
        "tag": null,
    })
}

/// A DigitalOcean request body as a record, or why it is malformed.
fn do_parse(body: &Value, zone: &str) -> Result<FakeRecord, String> {
    let field = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_owned);
    let rtype = field("type").ok_or("type is required")?;
    let name = field("name").ok_or("name is required")?;
    let data = field("data").ok_or("data is required")?;
    let ttl = body.get("ttl").and_then(Value::as_u64).unwrap_or(1800);
    let name = match name.as_str() {
        "@" => zone.to_owned(),
        relative if relative.ends_with('.') => relative.to_ascii_lowercase(),
        relative => format!("{}.{zone}", relative.to_ascii_lowercase()),
    };
    Ok(FakeRecord {
        id: String::new(),
        rtype,
        name,
        content: if data.ends_with('.') {
            data.to_ascii_lowercase()
        } else {
            data
        },
        ttl: u32::try_from(ttl).map_err(|_| "ttl is too large")?,
    })
}

fn do_domain_ok(store: &Store, domain: &str) -> bool {
    store.zone.trim_end_matches('.') == domain
}

async fn do_list(
    State(store): State<Shared>,
    Path(domain): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let store = lock(&store);
    if !do_domain_ok(&store, &domain) {
        return do_not_found();
    }
    let items = store.matching(
        query.get("name").map(String::as_str),
        query.get("type").map(String::as_str),
    );
    let page = number(&query, "page", 1);
    let (records, per_page, pages) = store.page(&items, page, number(&query, "per_page", 20));
    let url = |page: usize| {
        format!(
            "https://api.digitalocean.com/v2/domains/{domain}/records?page={page}&per_page={per_page}"
        )
    };
    let mut links = serde_json::Map::new();
    if page < pages {
        links.insert("next".into(), json!(url(page + 1)));
        links.insert("last".into(), json!(url(pages)));
    }
    if page > 1 {
        links.insert("first".into(), json!(url(1)));
        links.insert("prev".into(), json!(url(page - 1)));
    }
    let zone = store.zone.clone();
    axum::Json(json!({
        "domain_records": records.iter().map(|r| do_record(r, &zone)).collect::<Vec<_>>(),
        "links": if links.is_empty() { json!({}) } else { json!({ "pages": links }) },
        "meta": { "total": items.len() },
    }))
    .into_response()
}

async fn do_create(
    State(store): State<Shared>,
    Path(domain): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let mut store = lock(&store);
    if !do_domain_ok(&store, &domain) {
        return do_not_found();
    }
    match do_parse(&body, &store.zone).and_then(|record| store.create(record)) {
        Ok(created) => (
            StatusCode::CREATED,
            axum::Json(json!({ "domain_record": do_record(&created, &store.zone) })),
        )
            .into_response(),
        Err(why) => do_unprocessable(&why),
    }
}

fn do_unprocessable(why: &str) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        do_error("unprocessable_entity", why),
    )
        .into_response()
}

async fn do_update(
    State(store): State<Shared>,
    Path((domain, id)): Path<(String, String)>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let mut store = lock(&store);
    if !do_domain_ok(&store, &domain) {
        return do_not_found();
    }
    match do_parse(&body, &store.zone).and_then(|record| store.replace(&id, record)) {
        Ok(Some(record)) => {
            axum::Json(json!({ "domain_record": do_record(&record, &store.zone) })).into_response()
        }
        Ok(None) => do_not_found(),
        Err(why) => do_unprocessable(&why),
    }
}

async fn do_delete(
    State(store): State<Shared>,
    Path((domain, id)): Path<(String, String)>,
) -> Response {
    let mut store = lock(&store);
    if do_domain_ok(&store, &domain) && store.remove(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        do_not_found()
    }
}

// ---------------------------------------------------------------- Cloudflare

fn cf_error(code: u32, message: &str) -> axum::Json<Value> {
    axum::Json(json!({
        "success": false,
        "errors": [{ "code": code, "message": message }],
        "messages": [],
        "result": null,
    }))
}

fn cf_ok(result: Value, info: Option<Value>) -> Response {
    let mut body = json!({ "success": true, "errors": [], "messages": [], "result": result });
    if let Some(info) = info {
        body["result_info"] = info;
    }
    axum::Json(body).into_response()
}

fn cf_not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        cf_error(
            7003,
            "Could not route to /zones, perhaps your object identifier is invalid?",
        ),
    )
        .into_response()
}

fn cf_bad_request(why: &str) -> Response {
    (StatusCode::BAD_REQUEST, cf_error(81053, why)).into_response()
}

fn cf_record(record: &FakeRecord, zone: &str) -> Value {
    let content = match record.rtype.as_str() {
        "CNAME" => record.content.trim_end_matches('.').to_owned(),
        // Cloudflare returns TXT content in quotes.
        "TXT" => format!("\"{}\"", record.content),
        _ => record.content.clone(),
    };
    json!({
        "id": record.id,
        "type": record.rtype,
        "name": record.name.trim_end_matches('.'),
        "content": content,
        "proxiable": true,
        "proxied": false,
        "ttl": record.ttl,
        "zone_id": CLOUDFLARE_ZONE_ID,
        "zone_name": zone.trim_end_matches('.'),
        "created_on": "2026-01-01T00:00:00Z",
        "modified_on": "2026-01-01T00:00:00Z",
    })
}

/// A Cloudflare request body as a record, or why it is malformed.
fn cf_parse(body: &Value) -> Result<FakeRecord, String> {
    let field = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_owned);
    let rtype = field("type").ok_or("type is required")?;
    let name = field("name").ok_or("name is required")?;
    let content = field("content").ok_or("content is required")?;
    let ttl = body.get("ttl").and_then(Value::as_u64).unwrap_or(1);
    if body.get("proxied").and_then(Value::as_bool) == Some(true) {
        return Err("highlander's records must not be proxied".into());
    }
    let content = match rtype.as_str() {
        "CNAME" => format!("{}.", content.trim_end_matches('.').to_ascii_lowercase()),
        "TXT" => content.trim_matches('"').to_owned(),
        _ => content,
    };
    Ok(FakeRecord {
        id: String::new(),
        rtype,
        name: format!("{}.", name.trim_end_matches('.').to_ascii_lowercase()),
        content,
        ttl: u32::try_from(ttl).map_err(|_| "ttl is too large")?,
    })
}

async fn cf_zones(
    State(store): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let store = lock(&store);
    let name = store.zone.trim_end_matches('.').to_owned();
    let zones: Vec<Value> = if query.get("name").is_none_or(|n| *n == name) {
        vec![json!({ "id": CLOUDFLARE_ZONE_ID, "name": name, "status": "active" })]
    } else {
        Vec::new()
    };
    let count = zones.len();
    cf_ok(
        json!(zones),
        Some(
            json!({ "page": 1, "per_page": 20, "count": count, "total_count": count, "total_pages": 1 }),
        ),
    )
}

async fn cf_list(
    State(store): State<Shared>,
    Path(zone): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if zone != CLOUDFLARE_ZONE_ID {
        return cf_not_found();
    }
    let store = lock(&store);
    let items = store.matching(
        query.get("name").map(String::as_str),
        query.get("type").map(String::as_str),
    );
    let page = number(&query, "page", 1);
    let (records, per_page, pages) = store.page(&items, page, number(&query, "per_page", 100));
    cf_ok(
        json!(
            records
                .iter()
                .map(|r| cf_record(r, &store.zone))
                .collect::<Vec<_>>()
        ),
        Some(json!({
            "page": page,
            "per_page": per_page,
            "count": records.len(),
            "total_count": items.len(),
            "total_pages": pages,
        })),
    )
}

async fn cf_create(
    State(store): State<Shared>,
    Path(zone): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if zone != CLOUDFLARE_ZONE_ID {
        return cf_not_found();
    }
    let mut store = lock(&store);
    match cf_parse(&body).and_then(|record| store.create(record)) {
        Ok(created) => cf_ok(cf_record(&created, &store.zone), None),
        Err(why) => cf_bad_request(&why),
    }
}

async fn cf_update(
    State(store): State<Shared>,
    Path((zone, id)): Path<(String, String)>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if zone != CLOUDFLARE_ZONE_ID {
        return cf_not_found();
    }
    let mut store = lock(&store);
    match cf_parse(&body).and_then(|record| store.replace(&id, record)) {
        Ok(Some(record)) => cf_ok(cf_record(&record, &store.zone), None),
        Ok(None) => cf_not_found(),
        Err(why) => cf_bad_request(&why),
    }
}

async fn cf_delete(
    State(store): State<Shared>,
    Path((zone, id)): Path<(String, String)>,
) -> Response {
    if zone == CLOUDFLARE_ZONE_ID && lock(&store).remove(&id) {
        cf_ok(json!({ "id": id }), None)
    } else {
        cf_not_found()
    }
}
