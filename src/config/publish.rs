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
        let algorithm = match raw.tsig_algorithm.as_deref() {
            None | Some("hmac-sha256") => TsigAlgorithm::HmacSha256,
            Some("hmac-sha512") => TsigAlgorithm::HmacSha512,
            Some(other) => {
                self.problem(
                    format!("{key}.tsig_algorithm"),
                    quoted(other),
                    "expected \"hmac-sha256\" (the default) or \"hmac-sha512\"",
                );
                TsigAlgorithm::HmacSha256
            }
        };
        let field = format!("{key}.tsig_secret_file");
        let (secret_file, secret) = match raw.tsig_secret_file.as_deref() {
            None => {
                self.problem(
                    field,
                    "",
                    format!("an rfc2136 target needs the TSIG key's secret: a file holding its base64 secret, or the key file itself; {KEYGEN}"),
                );
                (PathBuf::new(), Vec::new())
            }
            Some(written) => {
                let path = base.join(written);
                let secret = match std::fs::read_to_string(&path) {
                    Err(e) => {
                        self.problem(
                            field,
                            quoted(written),
                            format!("cannot read {}: {e}; expected a readable file with the key's base64 secret; {KEYGEN}", path.display()),
                        );
                        Vec::new()
                    }
                    Ok(text) => match tsig_secret(&text) {
                        Ok(secret) => secret,
                        Err(why) => {
                            self.problem(
                                field,
                                quoted(written),
                                format!("{}: {why}", path.display()),
                            );
                            Vec::new()
                        }
                    },
                };
                (path, secret)
            }
        };
        TsigKey {
            name,
            algorithm,
            secret_file,
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
                let token = match std::env::var(env) {
                    Ok(value) => value.trim().to_owned(),
                    Err(e) => {
                        self.problem(
                            format!("{key}.token_env"),
                            quoted(env),
                            format!("{e} in highlander's environment; {accepted}"),
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
        let accepted = format!("expected an http:// or https:// URL, like \"{default}\"");
        match reqwest::Url::parse(&url) {
            Ok(parsed)
                if matches!(parsed.scheme(), "http" | "https")
                    && parsed.host_str().is_some_and(|h| !h.is_empty()) => {}
            Ok(_) => self.problem(format!("{key}.base_url"), quoted(written), accepted),
            Err(e) => self.problem(
                format!("{key}.base_url"),
                quoted(written),
                format!("{e}; {accepted}"),
            ),
        }
        url
    }
}

/// The secret of a TSIG key file: either the base64 secret alone, or the
/// `key "…" { algorithm …; secret "…"; };` clause `tsig-keygen` prints.
pub fn tsig_secret(text: &str) -> Result<Vec<u8>, String> {
    let encoded = match text.find("secret") {
        Some(at) => {
            let rest = &text[at + "secret".len()..];
            let quoted_secret = rest
                .split('"')
                .nth(1)
                .ok_or("found `secret` but no quoted base64 value after it")?;
            quoted_secret.trim().to_owned()
        }
        None => text.trim().to_owned(),
    };
    if encoded.is_empty() {
        return Err("the file is empty; expected the key's base64 secret".into());
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
    Ok(secret)
}
