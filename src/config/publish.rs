//! `[[publish]]`: the external DNS targets the leader keeps in step with the
//! committed choice (RFC 2136 servers, DigitalOcean, Cloudflare).
//!
//! Like the rest of the config, every problem names its key path, the value
//! and what would be accepted. Secrets (TSIG keys, API tokens) are read here,
//! once, and only ever printed as `<redacted>`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ServiceConfig, Validator, check_name, quoted};

/// `[[publish]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPublish {
    pub name: String,
    pub kind: String,
    pub services: Option<Vec<String>>,
    pub zone: String,
    pub record: Option<String>,
    pub ttl: Option<String>,
    #[serde(default = "default_interval")]
    pub interval: String,
    #[serde(default = "default_timeout")]
    pub timeout: String,
    // rfc2136
    pub server: Option<String>,
    pub tsig_key: Option<String>,
    pub tsig_algorithm: Option<String>,
    pub tsig_secret_file: Option<String>,
    // digitalocean and cloudflare
    pub token_file: Option<String>,
    pub token_env: Option<String>,
    pub base_url: Option<String>,
    // cloudflare
    pub zone_id: Option<String>,
    // Keys a person may try for a secret written inline. Declared so that
    // TOML's "unknown field" error, which quotes the whole line, never
    // prints the value: validation names the key and says where secrets go.
    pub token: Option<InlineSecret>,
    pub api_token: Option<InlineSecret>,
    pub secret: Option<InlineSecret>,
    pub tsig_secret: Option<InlineSecret>,
}

/// A value written where a secret does not belong, read and dropped unseen.
#[derive(Debug)]
pub struct InlineSecret;

impl<'de> Deserialize<'de> for InlineSecret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer).map(|_| InlineSecret)
    }
}

fn default_interval() -> String {
    "30s".into()
}

fn default_timeout() -> String {
    "5s".into()
}

/// The placeholder a record name template substitutes.
pub const SERVICE_PLACEHOLDER: &str = "{service}";

/// DigitalOcean's API, used when `base_url` is not set.
pub const DIGITALOCEAN_API: &str = "https://api.digitalocean.com";

/// Cloudflare's v4 API, used when `base_url` is not set.
pub const CLOUDFLARE_API: &str = "https://api.cloudflare.com/client/v4";

/// One `[[publish]]` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishConfig {
    /// Lowercase, unique: names the target in status, metrics and logs.
    pub name: String,
    pub kind: PublishKind,
    /// The services whose record it keeps, in config order.
    pub services: Vec<String>,
    /// The external zone, absolute and lowercase (`example.com.`).
    pub zone: String,
    /// The record's name, with `{service}` standing for the service name;
    /// absolute, lowercase, inside `zone`.
    pub record: String,
    pub ttl: Duration,
    /// How often the target is read back to repair drift.
    pub interval: Duration,
    /// How long one request to the target may take.
    pub timeout: Duration,
}

impl PublishConfig {
    /// The record this target keeps for `service`.
    pub fn record_name(&self, service: &str) -> String {
        self.record.replace(SERVICE_PLACEHOLDER, service)
    }
}

/// Where a target's records live and how to reach them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishKind {
    /// A primary server taking RFC 2136 updates signed with TSIG.
    Rfc2136 {
        /// `host:port`; the host may be a name, resolved at every attempt.
        server: String,
        tsig: TsigKey,
    },
    /// The DigitalOcean v2 domain records API.
    DigitalOcean { base_url: String, token: ApiToken },
    /// The Cloudflare v4 DNS records API.
    Cloudflare {
        base_url: String,
        /// The zone's id; looked up by the zone's name when not given.
        zone_id: Option<String>,
        token: ApiToken,
    },
}

impl PublishKind {
    /// The `kind` as written in the config.
    pub fn name(&self) -> &'static str {
        match self {
            PublishKind::Rfc2136 { .. } => "rfc2136",
            PublishKind::DigitalOcean { .. } => "digitalocean",
            PublishKind::Cloudflare { .. } => "cloudflare",
        }
    }
}

/// The TSIG MACs highlander signs updates with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigAlgorithm {
    HmacSha256,
    HmacSha512,
}

impl TsigAlgorithm {
    /// The name BIND and RFC 8945 use.
    pub fn name(self) -> &'static str {
        match self {
            TsigAlgorithm::HmacSha256 => "hmac-sha256",
            TsigAlgorithm::HmacSha512 => "hmac-sha512",
        }
    }

    /// The algorithm BIND calls `name` (in any case), if highlander signs with it.
    pub fn from_name(name: &str) -> Option<TsigAlgorithm> {
        [TsigAlgorithm::HmacSha256, TsigAlgorithm::HmacSha512]
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }
}

/// A TSIG key: its name (as the server knows it), algorithm and secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsigKey {
    /// Absolute and lowercase.
    pub name: String,
    pub algorithm: TsigAlgorithm,
    pub secret_file: PathBuf,
    pub secret: Secret,
}

/// Key material: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// An HTTP API's bearer token and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub source: TokenSource,
    pub secret: Secret,
}

impl ApiToken {
    /// The token as sent in the `Authorization` header.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", String::from_utf8_lossy(&self.secret.0))
    }
}

/// Where an [`ApiToken`] was read from (printed instead of the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    File(PathBuf),
    Env(String),
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::File(path) => write!(f, "token from {}", path.display()),
            TokenSource::Env(var) => write!(f, "token from ${var}"),
        }
    }
}

/// The smallest TTL each HTTP API takes (Cloudflare's 30 s is for
/// Enterprise zones; others need 60 s, which the API itself reports).
const DIGITALOCEAN_MIN_TTL: u64 = 30;
const CLOUDFLARE_MIN_TTL: u64 = 30;

impl Validator {
    pub(super) fn publish(
        &mut self,
        base: &Path,
        raw: Vec<RawPublish>,
        services: &[ServiceConfig],
        dns_ttl: Duration,
    ) -> Vec<PublishConfig> {
        let mut names = std::collections::HashSet::new();
        let mut targets = Vec::new();
        for (i, target) in raw.into_iter().enumerate() {
            let key = format!("publish[{i}]");
            let name = target.name.to_ascii_lowercase();
            if let Err(why) = super::check_label(&name) {
                self.problem(format!("{key}.name"), quoted(&target.name), why);
            } else if !names.insert(name.clone()) {
                self.problem(
                    format!("{key}.name"),
                    quoted(&target.name),
                    "duplicate publish target name; every [[publish]] needs its own name (it labels status and metrics)",
                );
            }
            let covered = self.publish_services(&key, target.services.as_deref(), services);
            let zone = self.publish_zone(&key, &target.zone);
            let record = self.record_template(&key, target.record.as_deref(), &zone, &covered);
            self.inline_secrets(&key, &target);
            let kind = self.publish_kind(&key, base, &target);
            let ttl = self.publish_ttl(&key, target.ttl.as_deref(), &kind, dns_ttl);
            let interval = self.positive_duration(&format!("{key}.interval"), &target.interval);
            let timeout = self.positive_duration(&format!("{key}.timeout"), &target.timeout);
            targets.push(PublishConfig {
                name,
                kind,
                services: covered,
                zone,
                record,
                ttl,
                interval,
                timeout,
            });
        }
        targets
    }

    /// Reports a secret written inline, by its key only.
    fn inline_secrets(&mut self, key: &str, raw: &RawPublish) {
        let inline = [
            ("token", raw.token.is_some()),
            ("api_token", raw.api_token.is_some()),
            ("secret", raw.secret.is_some()),
            ("tsig_secret", raw.tsig_secret.is_some()),
        ];
        for (field, _) in inline.into_iter().filter(|(_, given)| *given) {
            self.problem(
                format!("{key}.{field}"),
                "<redacted>",
                "secrets are never written in the config; name a file holding the API token with token_file, or an environment variable with token_env, and the TSIG key file with tsig_secret_file",
            );
        }
    }

    fn positive_duration(&mut self, key: &str, value: &str) -> Duration {
        let parsed = self.duration(key, value);
        if parsed.is_zero() && humantime::parse_duration(value).is_ok() {
            self.problem(key, quoted(value), "must be longer than 0, like \"5s\"");
        }
        parsed
    }

    fn publish_services(
        &mut self,
        key: &str,
        written: Option<&[String]>,
        services: &[ServiceConfig],
    ) -> Vec<String> {
        let Some(list) = written else {
            return services.iter().map(|s| s.name.clone()).collect();
        };
        if list.is_empty() {
            self.problem(
                format!("{key}.services"),
                "[]",
                "an empty list publishes nothing; leave the key out to publish every service",
            );
        }
        let mut covered = Vec::new();
        for (j, written) in list.iter().enumerate() {
            let service = written.to_ascii_lowercase();
            if !services.iter().any(|s| s.name == service) {
                let known: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
                self.problem(
                    format!("{key}.services[{j}]"),
                    quoted(written),
                    format!(
                        "no such service; expected one of the [[services]] names: {}",
                        known.join(", ")
                    ),
                );
            } else if covered.contains(&service) {
                self.problem(
                    format!("{key}.services[{j}]"),
                    quoted(written),
                    "listed twice; name each service once",
                );
            } else {
                covered.push(service);
            }
        }
        covered
    }

    fn publish_zone(&mut self, key: &str, written: &str) -> String {
        let zone = written.to_ascii_lowercase();
        let problem = if !zone.ends_with('.') {
            Some(format!(
                "a zone must be an absolute name ending with a dot, like \"{written}.\""
            ))
        } else if zone == "." {
            Some("highlander does not publish into the root zone; name your zone, like \"example.com.\"".to_owned())
        } else {
            check_name(&zone).err()
        };
        if let Some(why) = problem {
            self.problem(format!("{key}.zone"), quoted(written), why);
        }
        zone
    }

    fn record_template(
        &mut self,
        key: &str,
        written: Option<&str>,
        zone: &str,
        services: &[String],
    ) -> String {
        let template = match written {
            Some(written) => written.to_ascii_lowercase(),
            None => format!("{SERVICE_PLACEHOLDER}.{zone}"),
        };
        // The default follows the zone: a bad zone is reported once, at zone.
        if written.is_none() && (!zone.ends_with('.') || check_name(zone).is_err()) {
            return template;
        }
        let shown = quoted(written.unwrap_or(&template));
        let accepted = format!(
            "expected an absolute name inside the zone, with {SERVICE_PLACEHOLDER} for the service name, like \"{SERVICE_PLACEHOLDER}.{zone}\""
        );
        let field = format!("{key}.record");
        if !template.ends_with('.') {
            self.problem(&field, shown, format!("not an absolute name; {accepted}"));
            return template;
        }
        if services.len() > 1 && !template.contains(SERVICE_PLACEHOLDER) {
            self.problem(
                &field,
                shown,
                format!(
                    "this target publishes {} services, and without {SERVICE_PLACEHOLDER} they would all write the same record; {accepted}",
                    services.len()
                ),
            );
            return template;
        }
        for service in services {
            let name = template.replace(SERVICE_PLACEHOLDER, service);
            if let Err(why) = check_name(&name) {
                self.problem(&field, shown, format!("{name:?}: {why}"));
                return template;
            }
            if name == zone || !name.ends_with(&format!(".{zone}")) {
                self.problem(
                    &field,
                    shown,
                    format!("{name:?} is not a name below the zone {zone:?}; {accepted}"),
                );
                return template;
            }
        }
        template
    }

    fn publish_ttl(
        &mut self,
        key: &str,
        written: Option<&str>,
        kind: &PublishKind,
        dns_ttl: Duration,
    ) -> Duration {
        let min = match kind {
            PublishKind::Rfc2136 { .. } => 1,
            PublishKind::DigitalOcean { .. } => DIGITALOCEAN_MIN_TTL,
            PublishKind::Cloudflare { .. } => CLOUDFLARE_MIN_TTL,
        };
        let Some(written) = written else {
            // Cloudflare takes 30 s only on Enterprise zones; 60 s anywhere.
            let default_min = match kind {
                PublishKind::Cloudflare { .. } => 60,
                _ => min,
            };
            return dns_ttl.max(Duration::from_secs(default_min));
        };
        let field = format!("{key}.ttl");
        let ttl = self.duration(&field, written);
        if humantime::parse_duration(written).is_err() {
            return ttl;
        }
        if ttl.subsec_nanos() != 0 || ttl.as_secs() < min || ttl.as_secs() > 86_400 {
            self.problem(
                field,
                quoted(written),
                format!(
                    "a {} record's TTL is whole seconds from {min}s to 1 day, like \"{min}s\" or \"5m\"",
                    kind.name()
                ),
            );
        }
        ttl
    }

    fn publish_kind(&mut self, key: &str, base: &Path, raw: &RawPublish) -> PublishKind {
        let given = |value: &Option<String>| value.as_deref().map(quoted);
        let rfc2136_keys = [
            ("server", given(&raw.server)),
            ("tsig_key", given(&raw.tsig_key)),
            ("tsig_algorithm", given(&raw.tsig_algorithm)),
            ("tsig_secret_file", given(&raw.tsig_secret_file)),
        ];
        let api_keys = [
            ("token_file", given(&raw.token_file)),
            ("token_env", given(&raw.token_env)),
            ("base_url", given(&raw.base_url)),
        ];
        let cloudflare_keys = [("zone_id", given(&raw.zone_id))];
        let not_for = |this: &mut Self, keys: &[(&str, Option<String>)], kinds: &str| {
            for (field, value) in keys {
                if let Some(value) = value {
                    this.problem(
                        format!("{key}.{field}"),
                        value,
                        format!(
                            "only applies to kind = {kinds}, not kind = \"{}\"",
                            raw.kind
                        ),
                    );
                }
            }
        };
        match raw.kind.as_str() {
            "rfc2136" => {
                not_for(self, &api_keys, "\"digitalocean\" or \"cloudflare\"");
                not_for(self, &cloudflare_keys, "\"cloudflare\"");
                PublishKind::Rfc2136 {
                    server: self.dns_server(key, raw.server.as_deref()),
                    tsig: self.tsig_key(key, base, raw),
                }
            }
            "digitalocean" => {
                not_for(self, &rfc2136_keys, "\"rfc2136\"");
                not_for(self, &cloudflare_keys, "\"cloudflare\"");
                PublishKind::DigitalOcean {
                    base_url: self.base_url(key, raw.base_url.as_deref(), DIGITALOCEAN_API),
                    token: self.api_token(key, base, raw),
                }
            }
            "cloudflare" => {
                not_for(self, &rfc2136_keys, "\"rfc2136\"");
                let zone_id = raw.zone_id.clone();
                if let Some(id) = &zone_id {
                    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
                        self.problem(
                            format!("{key}.zone_id"),
                            quoted(id),
                            "expected the zone's id from the Cloudflare dashboard (32 hex digits), or leave it out to look the zone up by name",
                        );
                    }
                }
                PublishKind::Cloudflare {
                    base_url: self.base_url(key, raw.base_url.as_deref(), CLOUDFLARE_API),
                    zone_id,
                    token: self.api_token(key, base, raw),
                }
            }
            other => {
                self.problem(
                    format!("{key}.kind"),
                    quoted(other),
                    "expected \"rfc2136\" (a DNS server taking TSIG-signed updates), \"digitalocean\" or \"cloudflare\"",
                );
                PublishKind::Rfc2136 {
                    server: String::new(),
                    tsig: TsigKey {
                        name: String::new(),
                        algorithm: TsigAlgorithm::HmacSha256,
                        secret_file: PathBuf::new(),
                        secret: Secret(Vec::new()),
                    },
                }
            }
        }
    }

    fn dns_server(&mut self, key: &str, written: Option<&str>) -> String {
        const ACCEPTED: &str = "expected the primary server's address, like \"192.0.2.53\", \"192.0.2.53:53\", \"[2001:db8::53]:53\" or \"ns1.example.net:53\"";
        let field = format!("{key}.server");
        let Some(written) = written else {
            self.problem(
                field,
                "",
                format!("an rfc2136 target needs a server; {ACCEPTED}"),
            );
            return String::new();
        };
        if let Ok(ip) = written.parse::<std::net::IpAddr>() {
            return std::net::SocketAddr::new(ip, 53).to_string();
        }
        if written.parse::<std::net::SocketAddr>().is_ok() {
            return written.to_owned();
        }
        let with_port = match written.rsplit_once(':') {
            Some((_, port)) if !port.contains(']') => written.to_owned(),
            _ => format!("{written}:53"),
        };
        if let Err(why) = super::check_host_port(&with_port) {
            self.problem(field, quoted(written), format!("{why}; {ACCEPTED}"));
        }
        with_port
    }

    fn tsig_key(&mut self, key: &str, base: &Path, raw: &RawPublish) -> TsigKey {
        const KEYGEN: &str =
            "create one with `tsig-keygen -a hmac-sha256 highlander > highlander.key`";
        let name = match raw.tsig_key.as_deref() {
            None => {
                self.problem(
                    format!("{key}.tsig_key"),
                    "",
                    format!("an rfc2136 target signs its updates with TSIG: name the key the server knows, like \"highlander\"; {KEYGEN}"),
                );
                String::new()
            }
            Some(written) => {
                let mut name = written.to_ascii_lowercase();
                if !name.ends_with('.') {
                    name.push('.');
                }
                if let Err(why) = check_name(&name) {
                    self.problem(format!("{key}.tsig_key"), quoted(written), why);
                }
                name
            }
        };
        let written = match raw.tsig_algorithm.as_deref() {
            None => None,
            Some(spelled) => match TsigAlgorithm::from_name(spelled) {
                Some(algorithm) => Some(algorithm),
                None => {
                    self.problem(
                        format!("{key}.tsig_algorithm"),
                        quoted(spelled),
                        "expected \"hmac-sha256\" (the default) or \"hmac-sha512\"",
                    );
                    None
                }
            },
        };
        let field = format!("{key}.tsig_secret_file");
        let Some(file) = raw.tsig_secret_file.as_deref() else {
            self.problem(
                field,
                "",
                format!("an rfc2136 target needs the TSIG key's secret: a file holding its base64 secret, or the key file itself; {KEYGEN}"),
            );
            return TsigKey {
                name,
                algorithm: written.unwrap_or(TsigAlgorithm::HmacSha256),
                secret_file: PathBuf::new(),
                secret: Secret(Vec::new()),
            };
        };
        let path = base.join(file);
        let read = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}; expected a readable file with the key's base64 secret; {KEYGEN}", path.display()))
            .and_then(|text| {
                tsig_key_file(&text).map_err(|why| format!("{}: {why}", path.display()))
            });
        let (secret, algorithm) = match read {
            Ok(key_file) => match tsig_algorithm(written, key_file.algorithm.as_deref()) {
                Ok(algorithm) => (key_file.secret, algorithm),
                Err(why) => {
                    self.problem(field, quoted(file), format!("{}: {why}", path.display()));
                    (Vec::new(), TsigAlgorithm::HmacSha256)
                }
            },
            Err(why) => {
                self.problem(field, quoted(file), why);
                (Vec::new(), written.unwrap_or(TsigAlgorithm::HmacSha256))
            }
        };
        TsigKey {
            name,
            algorithm,
            secret_file: path,
            secret: Secret(secret),
        }
    }

    fn api_token(&mut self, key: &str, base: &Path, raw: &RawPublish) -> ApiToken {
        let accepted = format!(
            "expected token_file (a file holding the API token) or token_env (the name of an environment variable holding it) for kind = \"{}\"",
            raw.kind
        );
        let (source, token) = match (&raw.token_file, &raw.token_env) {
            (Some(_), Some(env)) => {
                self.problem(
                    format!("{key}.token_env"),
                    quoted(env),
                    format!("set only one of token_file and token_env; {accepted}"),
                );
                (TokenSource::Env(env.clone()), String::new())
            }
            (None, None) => {
                self.problem(format!("{key}.token_file"), "", accepted);
                (TokenSource::Env(String::new()), String::new())
            }
            (Some(written), None) => {
                let path = base.join(written);
                let token = match std::fs::read_to_string(&path) {
                    Ok(text) => text.trim().to_owned(),
                    Err(e) => {
                        self.problem(
                            format!("{key}.token_file"),
                            quoted(written),
                            format!("cannot read {}: {e}; {accepted}", path.display()),
                        );
                        String::new()
                    }
                };
                (TokenSource::File(path), token)
            }
            (None, Some(env)) => {
                let token = match token_from_env(env, std::env::var(env)) {
                    Ok(token) => token,
                    Err(why) => {
                        self.problem(
                            format!("{key}.token_env"),
                            quoted(env),
                            format!("{why}; {accepted}"),
                        );
                        String::new()
                    }
                };
                (TokenSource::Env(env.clone()), token)
            }
        };
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.problem(
                format!(
                    "{key}.{}",
                    match source {
                        TokenSource::File(_) => "token_file",
                        TokenSource::Env(_) => "token_env",
                    }
                ),
                source.to_string(),
                "the token holds whitespace or control characters; expected the API token alone",
            );
        }
        ApiToken {
            source,
            secret: Secret(token.into_bytes()),
        }
    }

    fn base_url(&mut self, key: &str, written: Option<&str>, default: &str) -> String {
        let Some(written) = written else {
            return default.to_owned();
        };
        let url = written.trim_end_matches('/').to_owned();
        if let Err((shown, why)) = check_base_url(&url) {
            // A URL that does not even parse is shown only if nothing in it
            // could be a credential (a user, a password, a query, a fragment).
            let shown = shown.unwrap_or_else(|| {
                if written.contains(['@', '?', '#']) {
                    "(not shown: it may hold a credential)".to_owned()
                } else {
                    quoted(written)
                }
            });
            self.problem(
                format!("{key}.base_url"),
                shown,
                format!("{why}; expected an http:// or https:// URL, like \"{default}\" (http:// only to a loopback address, such as a local proxy)"),
            );
        }
        url
    }
}

/// Whether `url` may carry an API token: https, or http to a loopback
/// host, and nothing in it that is a credential. On an error, also the URL
/// to show instead of the one written, when that one holds a credential.
fn check_base_url(url: &str) -> Result<(), (Option<String>, String)> {
    let parsed = reqwest::Url::parse(url).map_err(|e| (None, e.to_string()))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err((None, "no host".into()));
    }
    if !parsed.username().is_empty()
        || parsed.password().is_some()
        || parsed.query().is_some()
        || parsed.fragment().is_some()
    {
        let shown = format!(
            "\"{}://{}{}\" (the rest not shown)",
            parsed.scheme(),
            parsed.host_str().unwrap_or_default(),
            parsed.port().map(|p| format!(":{p}")).unwrap_or_default()
        );
        return Err((
            Some(shown),
            "a base_url carries no user, password, query or fragment: the token comes only from token_file or token_env".into(),
        ));
    }
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&parsed) => Ok(()),
        "http" => Err((
            None,
            "http:// would send the API token in clear to a host other than this machine".into(),
        )),
        other => Err((None, format!("the scheme {other}:// is not HTTP"))),
    }
}

/// Whether `url`'s host is this machine: `localhost` or a loopback address.
fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// The token held by environment variable `var`, from what
/// `std::env::var(var)` returned. The error names the variable and never
/// holds its value (a `VarError::NotUnicode` prints it).
fn token_from_env(var: &str, value: Result<String, std::env::VarError>) -> Result<String, String> {
    match value {
        Ok(value) => Ok(value.trim().to_owned()),
        Err(std::env::VarError::NotPresent) => Err(format!(
            "${var}: environment variable not found in highlander's environment"
        )),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!(
            "${var}: environment variable holds bytes that are not UTF-8 (not shown: it may be the token)"
        )),
    }
}

/// What a TSIG key file holds.
#[derive(Debug, PartialEq, Eq)]
pub struct TsigKeyFile {
    pub secret: Vec<u8>,
    /// The `algorithm` statement's value, lowercase; `None` if the file
    /// holds the secret alone or the clause has no such statement.
    pub algorithm: Option<String>,
}

/// Reads a TSIG key file: either the base64 secret alone, or one
/// `key "<name>" { algorithm <name>; secret "<base64>"; };` clause as
/// `tsig-keygen` prints it (comments allowed). Errors name lines and
/// statements, never the secret or any other text of the file.
pub fn tsig_key_file(text: &str) -> Result<TsigKeyFile, String> {
    let is_key = |word: &str| word.eq_ignore_ascii_case("key");
    let (encoded, algorithm) = match conf_tokens(text) {
        Ok(tokens) if matches!(tokens.first(), Some((_, Token::Word(w))) if is_key(w)) => {
            let clause = key_clause(&tokens)?;
            (clause.secret, clause.algorithm)
        }
        Err(why) if text.split_whitespace().next().is_some_and(is_key) => return Err(why),
        // Anything else is taken as the secret alone, as it always was.
        _ => (text.trim(), None),
    };
    if encoded.is_empty() {
        return Err("the secret is empty; expected the key's base64 secret".into());
    }
    let secret = data_encoding::BASE64
        .decode(encoded.as_bytes())
        .map_err(|e| format!("the secret is not valid base64 ({e}); expected the key's base64 secret, as `tsig-keygen` prints it"))?;
    if secret.len() < 16 {
        return Err(format!(
            "the secret is {} bytes long; use at least 16 random bytes (`tsig-keygen` makes 32)",
            secret.len()
        ));
    }
    Ok(TsigKeyFile {
        secret,
        algorithm: algorithm.map(str::to_ascii_lowercase),
    })
}

/// The algorithm to sign with: `written` in the config, checked against the
/// key file's `algorithm` statement; the file's when the config says none.
fn tsig_algorithm(
    written: Option<TsigAlgorithm>,
    in_file: Option<&str>,
) -> Result<TsigAlgorithm, String> {
    let Some(in_file) = in_file else {
        return Ok(written.unwrap_or(TsigAlgorithm::HmacSha256));
    };
    match (written, TsigAlgorithm::from_name(in_file)) {
        (_, None) => Err(format!(
            "the key file says `algorithm {in_file};`, which highlander does not sign with; make a key with `tsig-keygen -a hmac-sha256` (or hmac-sha512)"
        )),
        (Some(written), Some(file)) if written != file => Err(format!(
            "the key file says `algorithm {};` but tsig_algorithm is \"{}\"; they must match: set tsig_algorithm = \"{}\", or use a {} key",
            file.name(),
            written.name(),
            file.name(),
            written.name()
        )),
        (_, Some(file)) => Ok(file),
    }
}

/// One token of a named.conf fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    Word(&'a str),
    Quoted(&'a str),
    Open,
    Close,
    Semicolon,
}

impl Token<'_> {
    /// How an error names it: never its text, which may be the secret.
    fn kind(self) -> &'static str {
        match self {
            Token::Word(_) => "a word",
            Token::Quoted(_) => "a quoted string",
            Token::Open => "`{`",
            Token::Close => "`}`",
            Token::Semicolon => "`;`",
        }
    }
}

/// The tokens of a named.conf fragment, each with its line number;
/// comments (`#`, `//`, `/* */`) dropped.
fn conf_tokens(text: &str) -> Result<Vec<(usize, Token<'_>)>, String> {
    let mut tokens = Vec::new();
    let (mut rest, mut line) = (text, 1);
    while let Some(c) = rest.chars().next() {
        let (token, taken) = match c {
            '\n' => (None, 1),
            c if c.is_whitespace() => (None, c.len_utf8()),
            '#' => (None, rest.find('\n').unwrap_or(rest.len())),
            '/' if rest.starts_with("//") => (None, rest.find('\n').unwrap_or(rest.len())),
            '/' if rest.starts_with("/*") => match rest.find("*/") {
                Some(end) => (None, end + 2),
                None => return Err(format!("line {line}: a /* comment is never closed")),
            },
            '{' => (Some(Token::Open), 1),
            '}' => (Some(Token::Close), 1),
            ';' => (Some(Token::Semicolon), 1),
            '"' => match rest[1..].find('"') {
                Some(end) => (Some(Token::Quoted(&rest[1..=end])), end + 2),
                None => return Err(format!("line {line}: a quoted string is never closed")),
            },
            _ => {
                let end = rest
                    .find(|c: char| c.is_whitespace() || "{};\"".contains(c))
                    .unwrap_or(rest.len());
                (Some(Token::Word(&rest[..end])), end)
            }
        };
        if let Some(token) = token {
            tokens.push((line, token));
        }
        line += rest[..taken].matches('\n').count();
        rest = &rest[taken..];
    }
    Ok(tokens)
}

/// The statements of a key clause that highlander reads.
struct KeyClause<'a> {
    secret: &'a str,
    algorithm: Option<&'a str>,
}

/// Reads `key <name> { <statement>; … };` from all of `tokens`.
fn key_clause<'a>(tokens: &[(usize, Token<'a>)]) -> Result<KeyClause<'a>, String> {
    const SHAPE: &str = "expected one clause `key \"<name>\" { algorithm <name>; secret \"<base64>\"; };` as `tsig-keygen` prints it, or the base64 secret alone";
    let mut at = tokens.iter().copied().skip(1);
    let last_line = tokens.last().map_or(1, |(line, _)| *line);
    let mut next = |wanted: &str| {
        at.next().ok_or_else(|| {
            format!("line {last_line}: the file ends where {wanted} belongs; {SHAPE}")
        })
    };
    match next("the key's name")? {
        (_, Token::Word(_) | Token::Quoted(_)) => {}
        (line, other) => {
            return Err(format!(
                "line {line}: {} where the key's name belongs; {SHAPE}",
                other.kind()
            ));
        }
    }
    match next("`{`")? {
        (_, Token::Open) => {}
        (line, other) => {
            return Err(format!(
                "line {line}: {} where `{{` belongs; {SHAPE}",
                other.kind()
            ));
        }
    }
    let (mut secret, mut algorithm) = (None, None);
    loop {
        let (line, statement) = match next("`}`")? {
            (_, Token::Close) => break,
            (line, Token::Word(word)) => (line, word.to_ascii_lowercase()),
            (line, other) => {
                return Err(format!(
                    "line {line}: {} where a statement belongs; {SHAPE}",
                    other.kind()
                ));
            }
        };
        let slot = match statement.as_str() {
            "secret" => &mut secret,
            "algorithm" => &mut algorithm,
            // Not echoed: a stray word here may be part of the secret.
            _ => {
                return Err(format!(
                    "line {line}: a statement highlander does not know; {SHAPE}"
                ));
            }
        };
        let value = match next("the statement's value")? {
            (_, Token::Word(value) | Token::Quoted(value)) => value.trim(),
            (line, other) => {
                return Err(format!(
                    "line {line}: {} where the {statement} belongs; {SHAPE}",
                    other.kind()
                ));
            }
        };
        match next("`;`")? {
            (_, Token::Semicolon) => {}
            (line, other) => {
                return Err(format!(
                    "line {line}: {} where `;` belongs after the {statement}; {SHAPE}",
                    other.kind()
                ));
            }
        }
        if slot.replace(value).is_some() {
            return Err(format!(
                "line {line}: a second `{statement}` statement; {SHAPE}"
            ));
        }
    }
    // The closing `;` is optional here; anything else after it is not.
    let mut after = at.skip_while(|(_, t)| *t == Token::Semicolon);
    if let Some((line, _)) = after.next() {
        return Err(format!("line {line}: more after the key clause; {SHAPE}"));
    }
    let secret = secret.ok_or_else(|| {
        format!("the key clause has no `secret \"<base64>\";` statement; {SHAPE}")
    })?;
    Ok(KeyClause { secret, algorithm })
}

#[cfg(test)]
mod tests {
    //! `[[publish]]` validation that keeps secrets secret, and the TSIG key
    //! file reader.

    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    use super::*;
    use crate::config::Config;

    /// A TSIG secret as `tsig-keygen` makes it (32 bytes, base64).
    const TSIG_SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMyYnk=";

    const BASE: &str = r#"
[cluster]
secret_file = "cluster.secret"
[[cluster.nodes]]
id = 1
rpc = "127.0.0.1:7101"
dns = "127.0.0.1:5301"
api = "127.0.0.1:8101"
[dns]
zone = "svc.example."
[[services]]
name = "db"
[services.check]
kind = "tcp"
[[services.instances]]
name = "db1"
address = "10.0.0.11:5432"
a = "10.0.0.11"
"#;

    /// Parses [`BASE`] plus `publish`, with `files` written beside it;
    /// the error as printed.
    fn parse(publish: &str, files: &[(&str, &str)]) -> Result<Config, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text);
        write("cluster.secret", "0123456789abcdef0123").map_err(|e| e.to_string())?;
        write("api.token", "dop_v1_0123456789abcdef").map_err(|e| e.to_string())?;
        for (name, text) in files {
            write(name, text).map_err(|e| e.to_string())?;
        }
        Config::parse(
            &dir.path().join("highlander.toml"),
            &format!("{BASE}\n{publish}"),
        )
        .map_err(|e| e.to_string())
    }

    #[track_caller]
    fn refused(publish: &str, files: &[(&str, &str)]) -> String {
        match parse(publish, files) {
            Ok(_) => panic!("expected a problem with:\n{publish}"),
            Err(shown) => shown,
        }
    }

    fn digitalocean(base_url: &str) -> String {
        format!(
            "[[publish]]\nname = \"do\"\nkind = \"digitalocean\"\nzone = \"example.com.\"\ntoken_file = \"api.token\"\nbase_url = \"{base_url}\"\n"
        )
    }

    fn rfc2136(extra: &str) -> String {
        format!(
            "[[publish]]\nname = \"ns1\"\nkind = \"rfc2136\"\nzone = \"example.com.\"\nserver = \"192.0.2.53\"\ntsig_key = \"highlander\"\ntsig_secret_file = \"tsig.key\"\n{extra}"
        )
    }

    fn tsig(config: &Config) -> &TsigKey {
        match &config.publish[0].kind {
            PublishKind::Rfc2136 { tsig, .. } => tsig,
            other => panic!("expected rfc2136, got {other:?}"),
        }
    }

    #[test]
    fn a_token_env_that_is_not_utf8_is_named_and_never_printed() {
        let value = OsString::from_vec(b"supersecret-tok\xff".to_vec());
        let why = token_from_env("CFTOK", Err(std::env::VarError::NotUnicode(value)))
            .expect_err("not UTF-8");
        assert!(why.contains("$CFTOK") && why.contains("not UTF-8"), "{why}");
        assert!(!why.contains("supersecret"), "the token leaked: {why}");
        let why = token_from_env("CFTOK", Err(std::env::VarError::NotPresent)).expect_err("unset");
        assert_eq!(
            why,
            "$CFTOK: environment variable not found in highlander's environment"
        );
        assert_eq!(
            token_from_env("CFTOK", Ok(" tok-123\n".into())),
            Ok("tok-123".into())
        );
    }

    #[test]
    fn a_secret_written_inline_is_refused_by_its_key_never_printed() {
        for key in ["token", "api_token", "secret", "tsig_secret"] {
            let publish = digitalocean("https://api.digitalocean.com")
                + &format!("{key} = \"supersecret-inline-value\"\n");
            let shown = refused(&publish, &[]);
            assert!(
                shown.contains(&format!("publish[0].{key} = <redacted>")),
                "{shown}"
            );
            assert!(shown.contains("token_file"), "{shown}");
            assert!(!shown.contains("supersecret"), "the secret leaked: {shown}");
        }
    }

    #[test]
    fn plain_http_base_urls_are_refused_unless_loopback() {
        let shown = refused(&digitalocean("http://api.example.net/v2"), &[]);
        assert!(
            shown.contains("publish[0].base_url = \"http://api.example.net/v2\""),
            "{shown}"
        );
        assert!(shown.contains("in clear"), "{shown}");
        assert!(
            shown.contains("http:// only to a loopback address"),
            "{shown}"
        );
        for local in [
            "http://127.0.0.1:8080",
            "http://127.0.0.2/api",
            "http://[::1]:9000",
            "http://localhost:8080/v4",
            "https://api.example.net",
        ] {
            if let Err(shown) = parse(&digitalocean(local), &[]) {
                panic!("{local} should be accepted: {shown}");
            }
        }
        assert!(refused(&digitalocean("ftp://api.example.net"), &[]).contains("not HTTP"));
    }

    #[test]
    fn a_base_url_carrying_credentials_is_refused_without_printing_them() {
        for url in [
            "https://me:supersecret@api.example.net",
            "https://supersecret@api.example.net",
            "https://api.example.net/v2?token=supersecret",
            "https://api.example.net/v2#supersecret",
        ] {
            let shown = refused(&digitalocean(url), &[]);
            assert!(
                shown.contains(
                    "publish[0].base_url = \"https://api.example.net\" (the rest not shown)"
                ),
                "{shown}"
            );
            assert!(!shown.contains("supersecret"), "leaked: {shown}");
        }
        // Nor when the URL does not parse at all.
        for url in [
            "https://me:supersecret@",
            "https://me:supersecret@api.example.net:99999",
        ] {
            let shown = refused(&digitalocean(url), &[]);
            assert!(
                shown.contains("publish[0].base_url = (not shown: it may hold a credential)"),
                "{shown}"
            );
            assert!(!shown.contains("supersecret"), "leaked: {shown}");
        }
    }

    #[test]
    fn a_key_named_like_a_statement_is_read_by_its_statements() {
        let file = format!(
            "# made by tsig-keygen\nkey \"my-secret\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{TSIG_SECRET}\";\n}};\n"
        );
        let config = parse(&rfc2136(""), &[("tsig.key", &file)]).expect("a valid key file");
        assert_eq!(tsig(&config).secret.0, b"secret-secret-secret-secret-32by");
        assert_eq!(tsig(&config).algorithm, TsigAlgorithm::HmacSha256);
        // Statements in any order, comments of every kind, a bare name.
        let file = format!(
            "key secret-key {{ /* sha512 */ secret\n \"{TSIG_SECRET}\"; // the secret\n ALGORITHM \"HMAC-SHA512\"; }}"
        );
        let read = tsig_key_file(&file).expect("a valid key clause");
        assert_eq!(read.algorithm.as_deref(), Some("hmac-sha512"));
        // The secret alone, as before.
        let config = parse(&rfc2136(""), &[("tsig.key", &format!("{TSIG_SECRET}\n"))])
            .expect("a bare secret");
        assert_eq!(tsig(&config).secret.0, b"secret-secret-secret-secret-32by");
    }

    #[test]
    fn the_key_files_algorithm_must_match_tsig_algorithm() {
        let sha512 =
            format!("key \"highlander\" {{ algorithm hmac-sha512; secret \"{TSIG_SECRET}\"; }};");
        let shown = refused(
            &rfc2136("tsig_algorithm = \"hmac-sha256\"\n"),
            &[("tsig.key", &sha512)],
        );
        assert!(
            shown.contains("publish[0].tsig_secret_file = \"tsig.key\""),
            "{shown}"
        );
        assert!(
            shown.contains(
                "the key file says `algorithm hmac-sha512;` but tsig_algorithm is \"hmac-sha256\""
            ),
            "{shown}"
        );
        assert!(
            shown.contains("set tsig_algorithm = \"hmac-sha512\""),
            "{shown}"
        );
        // Unset, tsig_algorithm follows the file.
        let config = parse(&rfc2136(""), &[("tsig.key", &sha512)]).expect("valid");
        assert_eq!(tsig(&config).algorithm, TsigAlgorithm::HmacSha512);
        let md5 = sha512.replace("hmac-sha512", "hmac-md5");
        let shown = refused(&rfc2136(""), &[("tsig.key", &md5)]);
        assert!(
            shown.contains("`algorithm hmac-md5;`, which highlander does not sign with"),
            "{shown}"
        );
    }

    #[test]
    fn a_malformed_key_clause_names_the_line_never_the_secret() {
        let cases = [
            (
                "key \"k\" {\n algorithm hmac-sha256;\n};".to_owned(),
                "no `secret",
            ),
            (
                format!("key \"k\" {{\n secret \"{TSIG_SECRET}\"\n}};"),
                "line 3: `}` where `;` belongs",
            ),
            (
                format!("key \"k\" {{\n {TSIG_SECRET};\n}};"),
                "line 2: a statement highlander does not know",
            ),
            (
                format!("key \"k\" {{ secret \"{TSIG_SECRET}\"; secret \"{TSIG_SECRET}\"; }};"),
                "a second `secret`",
            ),
            (
                format!("key \"k\" {{ secret \"{TSIG_SECRET}\"; }};\nkey \"j\" {{ }};"),
                "line 2: more after the key clause",
            ),
            (
                format!("key \"k\" {{ secret \"{TSIG_SECRET}\";"),
                "the file ends where `}` belongs",
            ),
            (
                format!("key \"k\" {{ secret \"{TSIG_SECRET};\n}};"),
                "line 1: a quoted string is never closed",
            ),
        ];
        for (file, expected) in cases {
            let why = tsig_key_file(&file).map(|_| ()).expect_err(&file);
            assert!(why.contains(expected), "{file}: {why}");
            assert!(
                !why.contains(&TSIG_SECRET[..12]),
                "the secret leaked: {why}"
            );
        }
    }
}
