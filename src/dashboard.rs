//! The on-call dashboard at `GET /`: one self-contained HTML page (inline CSS
//! and JavaScript, embedded in the binary) that polls `GET /v1/status` and
//! `GET /v1/events` on the node that served it.
//!
//! It owns only the page and the headers that keep it safe: a content
//! security policy that allows exactly the page's own inline script and
//! style (by hash) and requests to this node, so the page never loads
//! anything from elsewhere. It never reads cluster state itself; the
//! page gets everything through the public API like any other client.

use std::sync::LazyLock;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// The page, with its CSS and JavaScript inline.
const INDEX_HTML: &str = include_str!("dashboard/index.html");

/// The `content-security-policy` for [`INDEX_HTML`], computed once: the
/// hashes change whenever the page does, so they are never written by hand.
static CONTENT_SECURITY_POLICY: LazyLock<String> =
    LazyLock::new(|| content_security_policy(INDEX_HTML));

/// The dashboard route, for merging into the API router of any state type.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/", get(index))
}

async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Revalidate every load: after an upgrade the page must match the API.
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                CONTENT_SECURITY_POLICY.as_str(),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        INDEX_HTML,
    )
}

/// A policy that allows the inline `<script>` and `<style>` blocks of `html`
/// by their SHA-256 and nothing else from anywhere but this node: no other
/// scripts, no inline event handlers, no `style` attributes, no frames,
/// no forms.
fn content_security_policy(html: &str) -> String {
    let hashes = |tag: &str| {
        inline_blocks(html, tag)
            .map(|body| format!(" 'sha256-{}'", sha256_base64(body)))
            .collect::<String>()
    };
    format!(
        "default-src 'none'; script-src{}; style-src{}; connect-src 'self'; img-src 'self' data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hashes("script"),
        hashes("style"),
    )
}

/// The text of each `<tag>…</tag>` block in `html`, exactly as the browser
/// hashes it. The page is ours, so a plain scan is enough: its blocks have
/// no attributes.
fn inline_blocks<'a>(html: &'a str, tag: &str) -> impl Iterator<Item = &'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut rest = html;
    std::iter::from_fn(move || {
        let start = rest.find(&open)? + open.len();
        let len = rest[start..].find(&close)?;
        let body = &rest[start..start + len];
        rest = &rest[start + len + close.len()..];
        Some(body)
    })
}

fn sha256_base64(text: &str) -> String {
    base64(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
}

/// Standard base64 with padding (RFC 4648 §4), as CSP hash sources use.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> shift) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in vectors {
            assert_eq!(base64(input.as_bytes()), expected, "base64({input:?})");
        }
    }

    #[test]
    fn sha256_source_matches_a_known_hash() {
        // `printf 'abc' | openssl dgst -sha256 -binary | base64`
        assert_eq!(
            sha256_base64("abc"),
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
    }

    #[test]
    fn the_policy_names_exactly_the_pages_one_script_and_one_style() {
        let scripts: Vec<_> = inline_blocks(INDEX_HTML, "script").collect();
        let styles: Vec<_> = inline_blocks(INDEX_HTML, "style").collect();
        assert_eq!((scripts.len(), styles.len()), (1, 1));
        let policy = content_security_policy(INDEX_HTML);
        assert!(policy.contains(&format!(
            "script-src 'sha256-{}';",
            sha256_base64(scripts[0])
        )));
        assert!(policy.contains(&format!("style-src 'sha256-{}';", sha256_base64(styles[0]))));
        assert!(!policy.contains("unsafe"), "{policy}");
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_never_parses_server_text_as_html() {
        let page = INDEX_HTML.to_ascii_lowercase();
        for forbidden in [
            "http://",
            "https://",
            "//cdn",
            "<script src",
            "<link rel=\"stylesheet\"",
            "@import",
            "innerhtml",
            "outerhtml",
            "insertadjacenthtml",
            "document.write",
            " style=\"",
            " onclick=",
            " onload=",
        ] {
            assert!(!page.contains(forbidden), "the page contains {forbidden:?}");
        }
    }
}
