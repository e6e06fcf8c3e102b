//! What the HTTP API publishers (DigitalOcean, Cloudflare) share: one
//! client, bearer auth, the mapping of HTTP statuses onto [`PublishError`],
//! bounded pagination, and the write plan that turns what a name holds into
//! exactly one record and one marker, reusing the provider's record ids.
//!
//! A provider only says how its API spells a record ([`RecordApi`]); reading
//! and writing are done here, once, so both APIs fence and order writes the
//! same way.
//!
//! These APIs have no conditional write, so a write is fenced by the
//! leader's lease instead: checked before every request
//! ([`Api::call_leased`]). Record ids
//! from the API go into URL paths only if they are plain ([`path_id`]).
//!
//! Nothing here may put the token in an error, a log line or a status:
//! every message is written from the request's purpose, the status and the
//! API's own error text (with the token scrubbed out, should a server echo
//! it), and the `Authorization` header is marked sensitive so that not even
//! a `Debug` of the request shows it.

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};

use super::{Actual, Desired, Found, Lease, Marker, PublishError, Publisher};
use crate::config::{ApiToken, Target, TokenSource};
use crate::health::probe::describe_http_error;

/// How long to wait after a 429 that says nothing about when to come back.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The most pages one listing follows. Highlander lists one name at a time,
/// which holds a handful of records; more pages than this means something
/// else is writing there, and reading on would spend the rate limit.
pub const MAX_PAGES: u32 = 20;

/// The largest response body read; record listings are a few kilobytes.
const MAX_BODY: usize = 4 << 20;

/// The longest piece of an API's error text quoted in an error.
const MAX_API_MESSAGE: usize = 300;

/// One HTTP API, as a provider reaches it.
pub struct Api {
    client: reqwest::Client,
    /// `https://api.digitalocean.com`, without a trailing slash.
    base_url: String,
    /// How messages name the API: `DigitalOcean API (https://…)`.
    label: String,
    /// Marked sensitive, so reqwest never prints it.
    authorization: HeaderValue,
    /// Kept to name it in errors, and to scrub the token from API text.
    token: ApiToken,
    /// What a 401 or 403 should tell the operator the token needs.
    permission: String,
    timeout: Duration,
}

/// A request that the API answered with a 2xx or a 404; the callers decide
/// what a missing domain, zone or record means for them.
pub enum Reply {
    Ok(Vec<u8>),
    NotFound(Vec<u8>),
}

impl Api {
    /// An API at `base_url` used with `token`; `provider` names it in
    /// messages and `permission` says what a refused token lacks.
    pub fn new(
        provider: &str,
        base_url: &str,
        token: &ApiToken,
        timeout: Duration,
        permission: String,
    ) -> Result<Api, String> {
        let mut authorization = HeaderValue::from_str(&token.bearer()).map_err(|_| {
            format!(
                "the {} holds characters an HTTP header cannot carry; expected the {provider} API token alone",
                token.source
            )
        })?;
        authorization.set_sensitive(true);
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            // HTTP_PROXY in the environment must not see the token.
            .no_proxy()
            // A redirect would carry the token to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("highlander/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the {provider} API's HTTP client: {e}"))?;
        let base_url = base_url.trim_end_matches('/').to_owned();
        Ok(Api {
            client,
            label: format!("{provider} API ({base_url})"),
            base_url,
            authorization,
            token: token.clone(),
            permission,
            timeout,
        })
    }

    /// How messages name the API.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Sends one request and maps anything but a 2xx or 404 onto a
    /// [`PublishError`]; `what` says what it was for (`list the records at
    /// db.example.com.`), so every error can name the record.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<serde_json::Value>,
        what: &str,
    ) -> Result<Reply, PublishError> {
        self.call_within(method, path, query, body, what, self.timeout)
            .await
    }

    /// [`Api::call`] for one request of a write: sent only while `lease`
    /// holds. The request gets the target's whole timeout: the lease
    /// (a few hundred milliseconds, renewed by every heartbeat) is far
    /// shorter than an API call may take, and cutting the wait short would
    /// not take back a request already sent.
    pub async fn call_leased(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        what: &str,
        lease: &dyn Lease,
    ) -> Result<Reply, PublishError> {
        // No conditional write exists in these APIs: the lease is the fence.
        if lease.left().is_none() {
            return Err(PublishError::Deposed(format!(
                "did not {what}: this node no longer leads"
            )));
        }
        let sent = self
            .call_within(method, path, &[], body, what, self.timeout)
            .await;
        match sent {
            Err(error) if lease.left().is_none() => Err(PublishError::Deposed(format!(
                "this node's leadership ran out during the request to {what} ({error})"
            ))),
            sent => sent,
        }
    }

    /// [`Api::call`] with its own `timeout`.
    async fn call_within(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<serde_json::Value>,
        what: &str,
        timeout: Duration,
    ) -> Result<Reply, PublishError> {
        let mut url = Url::parse(&format!("{}{path}", self.base_url)).map_err(|e| {
            PublishError::Refused(format!(
                "cannot {what}: {}{path} is not a URL ({e}); check base_url",
                self.base_url
            ))
        })?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut request = self
            .client
            .request(method, url)
            .timeout(timeout)
            .header(AUTHORIZATION, self.authorization.clone());
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let exchange = async {
            let mut response = request.send().await?;
            let status = response.status();
            let headers = response.headers().clone();
            let mut bytes = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if bytes.len() + chunk.len() > MAX_BODY {
                    return Ok((status, headers, None));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok::<_, reqwest::Error>((status, headers, Some(bytes)))
        };
        // reqwest's timeout covers the whole exchange; this one is a guard
        // that holds even if a body trickles in.
        let (status, headers, body) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| self.timed_out(what, timeout))?
            .map_err(|e| {
                if e.is_timeout() {
                    self.timed_out(what, timeout)
                } else {
                    PublishError::Unreachable(format!(
                        "cannot {what}: {} is unreachable ({}); check base_url and the network",
                        self.label,
                        describe_http_error(&e)
                    ))
                }
            })?;
        let Some(body) = body else {
            return Err(PublishError::Unreachable(format!(
                "cannot {what}: {} sent a response larger than {} MiB",
                self.label,
                MAX_BODY >> 20
            )));
        };
        if status.is_success() {
            return Ok(Reply::Ok(body));
        }
        if status == StatusCode::NOT_FOUND {
            return Ok(Reply::NotFound(body));
        }
        Err(self.refusal(what, status, &headers, &body, SystemTime::now()))
    }

    fn timed_out(&self, what: &str, timeout: Duration) -> PublishError {
        PublishError::Unreachable(format!(
            "cannot {what}: {} did not answer within {}; check the network, or raise timeout",
            self.label,
            humantime::format_duration(timeout)
        ))
    }

    /// The error for a response that is neither a 2xx nor a 404.
    pub fn refusal(
        &self,
        what: &str,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> PublishError {
        let said = self.api_says(status, body);
        match status {
            StatusCode::TOO_MANY_REQUESTS => PublishError::RateLimited {
                retry_after: retry_after(headers, now),
                detail: format!("{} rate-limited the request to {what} ({said})", self.label),
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => PublishError::Refused(format!(
                "{} refused to {what} ({said}); check that the {} is valid and is {}",
                self.label, self.token.source, self.permission
            )),
            s if s.is_redirection() => PublishError::Refused(format!(
                "{} answered the request to {what} with a redirect ({said}{}); the token is never sent on, so set base_url to the API's own address",
                self.label,
                headers
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .map(|l| format!(" to {l}"))
                    .unwrap_or_default()
            )),
            s if s.is_server_error() => PublishError::Unreachable(format!(
                "{} failed to {what} ({said}); retrying",
                self.label
            )),
            _ => PublishError::Refused(format!("{} refused to {what} ({said})", self.label)),
        }
    }

    /// The error for a 404: what is missing is said by `check`.
    pub fn not_found(&self, what: &str, body: &[u8], check: &str) -> PublishError {
        PublishError::Refused(format!(
            "{} cannot {what} ({}); {check}",
            self.label,
            self.api_says(StatusCode::NOT_FOUND, body)
        ))
    }

    /// The status and the API's own error text, with the token scrubbed
    /// (before the text is cut, so no part of it survives, and after it is
    /// parsed, in case JSON escaping hid it).
    pub fn api_says(&self, status: StatusCode, body: &[u8]) -> String {
        let token = String::from_utf8_lossy(&self.token.secret.0);
        let scrub = |text: String| {
            if token.is_empty() {
                text
            } else {
                text.replace(token.as_ref(), "<redacted>")
            }
        };
        let body = scrub(String::from_utf8_lossy(body).into_owned());
        match api_message(body.as_bytes()) {
            Some(message) => format!("HTTP {status}: {}", scrub(message)),
            None => format!("HTTP {status}"),
        }
    }

    /// The error for a 2xx whose body is not what the API documents.
    pub fn malformed(&self, what: &str, error: &dyn std::fmt::Display) -> PublishError {
        PublishError::Unreachable(format!(
            "cannot {what}: {} answered with a body highlander cannot read ({error}); check that base_url points at the API",
            self.label
        ))
    }

    /// The source of the token, for messages that must say which one.
    pub fn token_source(&self) -> &TokenSource {
        &self.token.source
    }
}

/// How long a 429 asks us to wait: `Retry-After` in seconds or as an
/// HTTP-date, else DigitalOcean's `ratelimit-reset` (a Unix time), else
/// [`DEFAULT_RETRY_AFTER`]. Never zero, so a retry is never immediate.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Duration {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let until = |at: SystemTime| at.duration_since(now).unwrap_or(Duration::ZERO);
    let wait = if let Some(value) = header(RETRY_AFTER.as_str()) {
        match value.parse::<u64>() {
            Ok(seconds) => Some(Duration::from_secs(seconds)),
            Err(_) => httpdate::parse_http_date(value).ok().map(until),
        }
    } else {
        header("ratelimit-reset")
            .and_then(|v| v.parse::<u64>().ok())
            .map(|at| until(UNIX_EPOCH + Duration::from_secs(at)))
    };
    wait.unwrap_or(DEFAULT_RETRY_AFTER)
        .max(Duration::from_secs(1))
}

/// The error text of an API's JSON error body: DigitalOcean's `message`,
/// or Cloudflare's `errors: [{code, message}]`; else the body as text.
/// Cut to [`MAX_API_MESSAGE`] characters and one line.
pub fn api_message(body: &[u8]) -> Option<String> {
    let text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(json) => {
            let errors: Vec<String> = json
                .get("errors")
                .and_then(|e| e.as_array())
                .into_iter()
                .flatten()
                .filter_map(|e| {
                    let message = e.get("message")?.as_str()?;
                    Some(match e.get("code").and_then(|c| c.as_i64()) {
                        Some(code) => format!("{message} (code {code})"),
                        None => message.to_owned(),
                    })
                })
                .collect();
            if errors.is_empty() {
                json.get("message")?.as_str()?.to_owned()
            } else {
                errors.join("; ")
            }
        }
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        return None;
    }
    Some(match line.char_indices().nth(MAX_API_MESSAGE) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    })
}

/// One page of a listing.
pub struct Page<T> {
    pub items: Vec<T>,
    /// Whether the API says another page follows.
    pub more: bool,
    /// How many items the whole listing holds, when the API says.
    pub total: Option<u64>,
}

/// Every item of a paginated listing, fetching page 1, 2, … until the API
/// says there is no more, a page comes back empty, or the total is reached;
/// at most [`MAX_PAGES`] pages.
pub async fn all_pages<T, F, Fut>(
    label: &str,
    what: &str,
    mut fetch: F,
) -> Result<Vec<T>, PublishError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<Page<T>, PublishError>>,
{
    let mut items = Vec::new();
    for page in 1..=MAX_PAGES {
        let next = fetch(page).await?;
        let empty = next.items.is_empty();
        items.extend(next.items);
        let complete = next.total.is_some_and(|total| items.len() as u64 >= total);
        if !next.more || empty || complete {
            return Ok(items);
        }
    }
    Err(PublishError::Refused(format!(
        "cannot {what}: {label} still had more after {MAX_PAGES} pages ({} records); highlander keeps one record and one marker per name, so remove the others by hand",
        items.len()
    )))
}

/// A record as an HTTP API lists it, in highlander's spelling: the name
/// absolute and lowercase, a CNAME's target absolute (ending in a dot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: String,
    /// `A`, `AAAA`, `CNAME`, `TXT`, … as the API writes it.
    pub rtype: String,
    pub name: String,
    pub content: String,
    pub ttl: u32,
}

/// A record to create or to update an existing one to, in highlander's
/// spelling (as [`Listed`]); the provider converts it to its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub name: String,
    pub rtype: &'static str,
    pub content: String,
    pub ttl: u32,
}

impl Wanted {
    /// How messages name it: `A 192.0.2.1 at db.example.com.`.
    pub fn shown(&self) -> String {
        format!("{} {} at {}", self.rtype, self.content, self.name)
    }
}

/// How one HTTP API spells records: its paths, bodies and listings. The
/// requests themselves ([`list`], [`create`], [`update`], [`delete`]) and
/// what their statuses mean are the same for every provider.
#[async_trait]
pub trait RecordApi: Send + Sync {
    fn api(&self) -> &Api;
    /// The path of the zone's record collection, below `base_url`.
    async fn records_path(&self) -> Result<String, PublishError>;
    /// How many records a listing page asks for.
    fn per_page(&self) -> &'static str;
    /// One page of a 2xx listing.
    fn page(&self, what: &str, body: &[u8]) -> Result<Page<Listed>, PublishError>;
    /// The JSON body that creates `record`, or replaces another with it.
    fn body(&self, record: &Wanted) -> serde_json::Value;
    /// Checks a 2xx answer to a write; some APIs can say no with a 200.
    fn accepted(&self, _what: &str, _body: &[u8]) -> Result<(), PublishError> {
        Ok(())
    }
    /// What to check when the API says the zone is not there.
    fn missing_zone(&self) -> String;
}

/// Every record at `name` (absolute), of `rtype` only if given. Both APIs
/// filter by the full name without its dot and take `page` and `per_page`.
pub async fn list(
    api: &dyn RecordApi,
    name: &str,
    rtype: Option<&'static str>,
) -> Result<Vec<Listed>, PublishError> {
    let what = match rtype {
        Some(rtype) => format!("list the {rtype} records at {name}"),
        None => format!("list the records at {name}"),
    };
    let path = api.records_path().await?;
    all_pages(api.api().label(), &what, |page| {
        let (what, path) = (&what, &path);
        async move {
            let page = page.to_string();
            let mut query = vec![
                ("name", without_dot(name)),
                ("page", page.as_str()),
                ("per_page", api.per_page()),
            ];
            if let Some(rtype) = rtype {
                query.push(("type", rtype));
            }
            match api
                .api()
                .call(Method::GET, path, &query, None, what)
                .await?
            {
                Reply::Ok(body) => api.page(what, &body),
                Reply::NotFound(body) => Err(api.api().not_found(what, &body, &api.missing_zone())),
            }
        }
    })
    .await
}

/// Creates `record`, while `lease` holds.
pub async fn create(
    api: &dyn RecordApi,
    record: &Wanted,
    lease: &dyn Lease,
) -> Result<(), PublishError> {
    let what = format!("create {}", record.shown());
    let path = api.records_path().await?;
    let body = Some(api.body(record));
    match api
        .api()
        .call_leased(Method::POST, &path, body, &what, lease)
        .await?
    {
        Reply::Ok(body) => api.accepted(&what, &body),
        Reply::NotFound(body) => Err(api.api().not_found(&what, &body, &api.missing_zone())),
    }
}

/// Replaces the record `id` with `record`, while `lease` holds. A record
/// that is gone is a [`PublishError::Conflict`]: someone else wrote since
/// the read.
pub async fn update(
    api: &dyn RecordApi,
    id: &str,
    record: &Wanted,
    lease: &dyn Lease,
) -> Result<(), PublishError> {
    let what = format!("update record {id} to {}", record.shown());
    let path = format!("{}/{}", api.records_path().await?, path_id(api.api(), id)?);
    let body = Some(api.body(record));
    match api
        .api()
        .call_leased(Method::PUT, &path, body, &what, lease)
        .await?
    {
        Reply::Ok(body) => api.accepted(&what, &body),
        Reply::NotFound(_) => Err(PublishError::Conflict(format!(
            "{} cannot {what}: the record is gone since it was read, so someone else changed {}",
            api.api().label(),
            record.name
        ))),
    }
}

/// Deletes the record `id` (`shown` names it in errors), while `lease` holds.
pub async fn delete(
    api: &dyn RecordApi,
    id: &str,
    shown: &str,
    lease: &dyn Lease,
) -> Result<(), PublishError> {
    let what = format!("delete record {id} ({shown})");
    let path = format!("{}/{}", api.records_path().await?, path_id(api.api(), id)?);
    match api
        .api()
        .call_leased(Method::DELETE, &path, None, &what, lease)
        .await?
    {
        Reply::Ok(body) => api.accepted(&what, &body),
        // Already gone is what a delete wants.
        Reply::NotFound(_) => Ok(()),
    }
}

/// `id`, as the API gave it, checked for use as a URL path segment: only
/// letters, digits, `-` and `_`, as DigitalOcean's and Cloudflare's ids
/// are. Anything else (a `/`, `..`, `?`) could point the request, and the
/// token with it, at another resource, and percent-encoding does not help
/// with `..` (URL parsers read `%2e%2e` as `..`).
pub fn path_id<'a>(api: &Api, id: &'a str) -> Result<&'a str, PublishError> {
    let plain = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        return Ok(id);
    }
    let shown: String = id.chars().take(64).collect();
    Err(PublishError::Refused(format!(
        "{} gave the id {shown:?}, which highlander does not put in a URL; expected 1 to 64 letters, digits, '-' or '_'",
        api.label()
    )))
}

/// The record type that holds markers.
const MARKER_TYPE: &str = "TXT";

/// Every HTTP API publishes the same way; only the spelling differs.
#[async_trait]
impl<T: RecordApi> Publisher for T {
    async fn read(&self, name: &str) -> Result<Actual, PublishError> {
        read(self, name).await
    }

    async fn write(
        &self,
        desired: &Desired,
        actual: &Actual,
        lease: &dyn Lease,
    ) -> Result<(), PublishError> {
        write(self, desired, actual, lease).await
    }
}

/// What `api` holds at `name` and at its marker's name: two listings.
pub async fn read(api: &dyn RecordApi, name: &str) -> Result<Actual, PublishError> {
    let marker_name = super::marker_name(name);
    // One listing of every type at the name costs one request, not three.
    let records = list(api, name, None).await?;
    let markers = list(api, &marker_name, Some(MARKER_TYPE)).await?;
    Ok(actual(name, &records, &markers))
}

/// [`Actual`] from two listings, keeping only what is at the right name;
/// an A or AAAA whose content is not an address cannot be compared, so it
/// is left out (and never deleted: highlander did not write it).
pub fn actual(name: &str, records: &[Listed], markers: &[Listed]) -> Actual {
    let marker_name = super::marker_name(name);
    fn found<T>(l: &Listed, value: T) -> Found<T> {
        Found {
            value,
            ttl: l.ttl,
            id: Some(l.id.clone()),
        }
    }
    Actual {
        records: records
            .iter()
            .filter(|l| l.name == name)
            .filter_map(|l| {
                let target = match l.rtype.as_str() {
                    "CNAME" => Target::Cname(l.content.to_ascii_lowercase()),
                    "A" => Target::A(l.content.parse::<Ipv4Addr>().ok()?),
                    "AAAA" => Target::Aaaa(l.content.parse::<Ipv6Addr>().ok()?),
                    _ => return None,
                };
                Some(found(l, target))
            })
            .collect(),
        markers: markers
            .iter()
            .filter(|l| l.name == marker_name && l.rtype == MARKER_TYPE)
            .map(|l| found(l, vec![l.content.clone().into_bytes()]))
            .collect(),
    }
}

/// One request of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Delete { id: String, shown: String },
    Update { id: String, record: Wanted },
    Create { record: Wanted },
}

/// The requests that make `actual` (as just read) hold exactly `desired`:
/// one record of the desired type and one marker, each reusing an existing
/// id where there is one.
///
/// Order matters. A CNAME cannot share its name, so whatever a CNAME must
/// replace (or a CNAME that must go) is deleted before the write; other
/// extras are deleted after it, so the name never goes without an answer.
/// The marker comes last, so it never claims an epoch whose record is not
/// there yet.
pub fn steps(desired: &Desired, actual: &Actual) -> Result<Vec<Step>, PublishError> {
    let record = Wanted {
        name: desired.name.clone(),
        rtype: record_type(&desired.target),
        content: content(&desired.target),
        ttl: desired.ttl,
    };
    let marker = Wanted {
        name: desired.marker_name(),
        rtype: MARKER_TYPE,
        content: desired.marker.text(),
        ttl: desired.ttl,
    };
    let wanted_cname = matches!(desired.target, Target::Cname(_));
    let mut steps = Vec::new();
    let mut after = Vec::new();
    let chosen = choose(
        &actual.records,
        |f| f.value == desired.target && f.ttl == desired.ttl,
        |f| record_type(&f.value) == record.rtype,
    );
    for (i, found) in actual.records.iter().enumerate() {
        if chosen.index() == Some(i) {
            continue;
        }
        let delete = Step::Delete {
            id: id(found, &desired.name)?,
            shown: format!("{} at {}", found.value, desired.name),
        };
        if wanted_cname || matches!(found.value, Target::Cname(_)) {
            steps.push(delete);
        } else {
            after.push(delete);
        }
    }
    steps.extend(chosen.step(&actual.records, record)?);
    steps.append(&mut after);
    let chosen = choose(
        &actual.markers,
        |f| Marker::parse(&f.value).as_ref() == Some(&desired.marker) && f.ttl == desired.ttl,
        |_| true,
    );
    for (i, found) in actual.markers.iter().enumerate() {
        if chosen.index() != Some(i) {
            steps.push(Step::Delete {
                id: id(found, &marker.name)?,
                shown: format!(
                    "TXT {:?} at {}",
                    String::from_utf8_lossy(&found.value.join(&b' ')),
                    marker.name
                ),
            });
        }
    }
    steps.extend(chosen.step(&actual.markers, marker)?);
    Ok(steps)
}

/// What becomes of the one found record that stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Choice {
    /// Found `i` already is the desired record: no request.
    Keep(usize),
    /// Found `i` is of the right type: update it in place.
    Update(usize),
    /// Nothing of the right type: create one.
    Create,
}

impl Choice {
    fn index(self) -> Option<usize> {
        match self {
            Choice::Keep(i) | Choice::Update(i) => Some(i),
            Choice::Create => None,
        }
    }

    fn step<T>(self, found: &[Found<T>], record: Wanted) -> Result<Option<Step>, PublishError> {
        Ok(match self {
            Choice::Keep(_) => None,
            Choice::Update(i) => Some(Step::Update {
                id: id(&found[i], &record.name)?,
                record,
            }),
            Choice::Create => Some(Step::Create { record }),
        })
    }
}

/// Which found record stays: one that already is the desired record,
/// else the first of the right type.
fn choose<T>(
    found: &[Found<T>],
    equal: impl Fn(&Found<T>) -> bool,
    same_type: impl Fn(&Found<T>) -> bool,
) -> Choice {
    if let Some(i) = found.iter().position(|f| same_type(f) && equal(f)) {
        return Choice::Keep(i);
    }
    match found.iter().position(same_type) {
        Some(i) => Choice::Update(i),
        None => Choice::Create,
    }
}

fn id<T>(found: &Found<T>, name: &str) -> Result<String, PublishError> {
    found.id.clone().ok_or_else(|| {
        PublishError::Refused(format!(
            "a record at {name} was read without the API's id, so it cannot be changed"
        ))
    })
}

/// Makes `api` hold `desired`, by the [`steps`] from `actual`, each
/// request sent only while `lease` holds.
pub async fn write(
    api: &dyn RecordApi,
    desired: &Desired,
    actual: &Actual,
    lease: &dyn Lease,
) -> Result<(), PublishError> {
    for step in steps(desired, actual)? {
        match &step {
            Step::Delete { id, shown } => delete(api, id, shown, lease).await?,
            Step::Update { id, record } => update(api, id, record, lease).await?,
            Step::Create { record } => create(api, record, lease).await?,
        }
    }
    Ok(())
}

/// The record type a target is published as.
pub fn record_type(target: &Target) -> &'static str {
    match target {
        Target::Cname(_) => "CNAME",
        Target::A(_) => "A",
        Target::Aaaa(_) => "AAAA",
    }
}

/// A target's record content in highlander's spelling.
fn content(target: &Target) -> String {
    match target {
        Target::Cname(name) => name.clone(),
        Target::A(ip) => ip.to_string(),
        Target::Aaaa(ip) => ip.to_string(),
    }
}

/// `name` without its trailing dot, as both APIs write full names.
pub fn without_dot(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

/// A full name as an API writes it (no trailing dot), in highlander's
/// spelling: absolute and lowercase.
pub fn absolute(name: &str) -> String {
    let mut name = name.to_ascii_lowercase();
    if !name.ends_with('.') {
        name.push('.');
    }
    name
}

#[cfg(test)]
mod tests;
