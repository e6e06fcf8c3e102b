//! The pure parts of the HTTP publishers: status mapping, `Retry-After`,
//! API error texts, pagination bounds and the order of a write's requests.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::config::Secret;

const TOKEN: &str = "dop_v1_0123456789abcdef";

fn api() -> Api {
    let token = ApiToken {
        source: TokenSource::Env("DO_TOKEN".into()),
        secret: Secret(TOKEN.as_bytes().to_vec()),
    };
    Api::new(
        "DigitalOcean",
        "https://api.digitalocean.com/",
        &token,
        Duration::from_secs(5),
        "allowed to write domain example.com".into(),
    )
    .expect("a client")
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, HeaderValue::from_str(value).expect("a header value"));
    }
    map
}

#[test]
fn retry_after_is_read_as_seconds_or_an_http_date() {
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let after = |pairs: &[(&'static str, &str)]| retry_after(&headers(pairs), now);
    assert_eq!(after(&[("retry-after", "7")]), Duration::from_secs(7));
    let in_90s = httpdate::fmt_http_date(now + Duration::from_secs(90));
    assert_eq!(after(&[("retry-after", &in_90s)]), Duration::from_secs(90));
    // DigitalOcean's reset time, when there is no Retry-After.
    assert_eq!(
        after(&[("ratelimit-reset", "1700000042")]),
        Duration::from_secs(42)
    );
    assert_eq!(after(&[]), DEFAULT_RETRY_AFTER);
    assert_eq!(after(&[("retry-after", "soon")]), DEFAULT_RETRY_AFTER);
    // Never an immediate retry: zero and a date in the past wait a second.
    assert_eq!(after(&[("retry-after", "0")]), Duration::from_secs(1));
    let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
    assert_eq!(after(&[("retry-after", &past)]), Duration::from_secs(1));
}

#[test]
fn api_error_texts_are_read_from_either_shape() {
    assert_eq!(
        api_message(br#"{"id":"unauthorized","message":"Unable to authenticate you"}"#).as_deref(),
        Some("Unable to authenticate you")
    );
    assert_eq!(
        api_message(
            br#"{"success":false,"errors":[{"code":10000,"message":"Authentication error"},{"code":9109,"message":"Invalid access token"}],"messages":[],"result":null}"#
        )
        .as_deref(),
        Some("Authentication error (code 10000); Invalid access token (code 9109)")
    );
    assert_eq!(
        api_message(b"<html>\n  bad gateway\n</html>").as_deref(),
        Some("<html> bad gateway </html>")
    );
    assert_eq!(api_message(b""), None);
    assert_eq!(api_message(b"{}"), None);
    let long = api_message("x".repeat(1000).as_bytes()).expect("a message");
    assert_eq!(long.chars().count(), MAX_API_MESSAGE + 1);
    assert!(long.ends_with('…'));
}

#[test]
fn statuses_map_onto_publish_errors() {
    let api = api();
    let now = SystemTime::now();
    let what = "list the records at db.example.com.";
    let refusal = |status: u16, pairs: &[(&'static str, &str)], body: &str| {
        api.refusal(
            what,
            StatusCode::from_u16(status).expect("a status"),
            &headers(pairs),
            body.as_bytes(),
            now,
        )
    };
    match refusal(
        429,
        &[("retry-after", "3")],
        r#"{"id":"too_many_requests","message":"API Rate limit exceeded."}"#,
    ) {
        PublishError::RateLimited {
            retry_after,
            detail,
        } => {
            assert_eq!(retry_after, Duration::from_secs(3));
            assert!(detail.contains("API Rate limit exceeded."), "{detail}");
            assert!(detail.contains("db.example.com."), "{detail}");
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    for status in [401, 403] {
        let error = refusal(
            status,
            &[],
            r#"{"id":"unauthorized","message":"Unable to authenticate you"}"#,
        );
        let PublishError::Refused(message) = &error else {
            panic!("expected Refused, got {error:?}");
        };
        assert!(
            message.contains("DigitalOcean API (https://api.digitalocean.com)"),
            "{message}"
        );
        assert!(message.contains("token from $DO_TOKEN"), "{message}");
        assert!(
            message.contains("allowed to write domain example.com"),
            "{message}"
        );
        assert!(message.contains("Unable to authenticate you"), "{message}");
        assert!(!message.contains(TOKEN), "{message}");
    }
    let invalid = refusal(
        422,
        &[],
        r#"{"id":"unprocessable_entity","message":"Ttl must be at least 30"}"#,
    );
    assert!(
        matches!(&invalid, PublishError::Refused(m) if m.contains("Ttl must be at least 30")),
        "{invalid:?}"
    );
    assert!(matches!(
        refusal(502, &[], "bad gateway"),
        PublishError::Unreachable(_)
    ));
    let moved = refusal(301, &[("location", "https://elsewhere.example/v2")], "");
    assert!(
        matches!(&moved, PublishError::Refused(m) if m.contains("https://elsewhere.example/v2") && m.contains("set base_url")),
        "{moved:?}"
    );
    // A server that echoes the token does not get it into the error.
    let echoed = refusal(
        400,
        &[],
        &format!("{{\"message\":\"bad header Bearer {TOKEN}\"}}"),
    );
    assert!(!echoed.to_string().contains(TOKEN), "{echoed}");
    assert!(echoed.to_string().contains("Bearer <redacted>"), "{echoed}");
    // Nor a part of it, where the text is cut.
    let cut = refusal(
        400,
        &[],
        &format!("{} {TOKEN}", "x".repeat(MAX_API_MESSAGE - 10)),
    );
    assert!(!cut.to_string().contains(&TOKEN[..9]), "{cut}");
}

#[test]
fn the_token_never_shows_in_the_api_debug_output() {
    let api = api();
    assert!(!format!("{:?}", api.authorization).contains(TOKEN));
    assert!(!format!("{:?}", api.token).contains(TOKEN));
}

#[tokio::test]
async fn pages_are_followed_until_the_api_says_done_and_no_further() {
    let fetched = AtomicU32::new(0);
    let items = all_pages("the API", "list", |page| {
        fetched.fetch_add(1, Ordering::Relaxed);
        async move {
            Ok(Page {
                items: vec![page],
                more: page < 3,
                total: None,
            })
        }
    })
    .await
    .expect("three pages");
    assert_eq!(items, [1, 2, 3]);
    // The total stops a listing whose API keeps saying "more".
    let items = all_pages("the API", "list", |page| async move {
        Ok(Page {
            items: vec![page, page],
            more: true,
            total: Some(4),
        })
    })
    .await
    .expect("two pages");
    assert_eq!(items, [1, 1, 2, 2]);
    // An empty page ends it too.
    let items: Vec<u32> = all_pages("the API", "list", |_| async {
        Ok(Page {
            items: Vec::new(),
            more: true,
            total: None,
        })
    })
    .await
    .expect("one page");
    assert!(items.is_empty());
    let endless = all_pages(
        "the API",
        "list the records at db.example.com.",
        |page| async move {
            Ok(Page {
                items: vec![page],
                more: true,
                total: None,
            })
        },
    )
    .await;
    match endless {
        Err(PublishError::Refused(message)) => {
            assert!(message.contains("after 20 pages"), "{message}");
            assert!(message.contains("db.example.com."), "{message}");
        }
        other => panic!("expected a bounded listing, got {other:?}"),
    }
}

// ---------------------------------------------------------------- the write plan

fn a(last: u8) -> Target {
    Target::A(Ipv4Addr::new(192, 0, 2, last))
}

fn cname(to: &str) -> Target {
    Target::Cname(to.into())
}

fn desired(target: Target, instance: &str, epoch: u64) -> Desired {
    Desired {
        service: "db".into(),
        name: "db.example.com.".into(),
        target,
        ttl: 60,
        marker: Marker {
            instance: instance.into(),
            epoch,
        },
    }
}

fn found<T>(id: &str, value: T, ttl: u32) -> Found<T> {
    Found {
        value,
        ttl,
        id: Some(id.into()),
    }
}

fn marker(id: &str, instance: &str, epoch: u64) -> Found<Vec<Vec<u8>>> {
    found(
        id,
        vec![format!("instance={instance} epoch={epoch}").into_bytes()],
        60,
    )
}

fn record(rtype: &'static str, content: &str) -> Wanted {
    Wanted {
        name: "db.example.com.".into(),
        rtype,
        content: content.into(),
        ttl: 60,
    }
}

fn marker_record(instance: &str, epoch: u64) -> Wanted {
    Wanted {
        name: "_highlander.db.example.com.".into(),
        rtype: "TXT",
        content: format!("instance={instance} epoch={epoch}"),
        ttl: 60,
    }
}

fn delete(id: &str) -> (&str, Option<Wanted>) {
    (id, None)
}

/// Steps as `(id or "new", what it becomes)`, to compare briefly.
fn brief(steps: Vec<Step>) -> Vec<(String, Option<Wanted>)> {
    steps
        .into_iter()
        .map(|s| match s {
            Step::Delete { id, .. } => (id, None),
            Step::Update { id, record } => (id, Some(record)),
            Step::Create { record } => ("new".into(), Some(record)),
        })
        .collect()
}

fn expect(steps: &[(&str, Option<Wanted>)]) -> Vec<(String, Option<Wanted>)> {
    steps
        .iter()
        .map(|(id, record)| ((*id).to_owned(), record.clone()))
        .collect()
}

#[test]
fn an_empty_name_gets_the_record_then_the_marker() {
    let steps = steps(&desired(a(1), "db1", 1), &Actual::default()).expect("steps");
    assert_eq!(
        brief(steps),
        expect(&[
            ("new", Some(record("A", "192.0.2.1"))),
            ("new", Some(marker_record("db1", 1))),
        ])
    );
}

#[test]
fn a_change_updates_both_in_place() {
    let actual = Actual {
        records: vec![found("r1", a(1), 60)],
        markers: vec![marker("m1", "db1", 1)],
    };
    let steps = steps(&desired(a(2), "db2", 2), &actual).expect("steps");
    assert_eq!(
        brief(steps),
        expect(&[
            ("r1", Some(record("A", "192.0.2.2"))),
            ("m1", Some(marker_record("db2", 2))),
        ])
    );
}

#[test]
fn what_already_matches_is_kept_and_extras_go_after_the_write() {
    // The right record sits second, beside a wrong A and a stale AAAA; the
    // marker is right but has a twin.
    let actual = Actual {
        records: vec![
            found("r1", a(9), 60),
            found("r2", a(1), 60),
            found("r3", Target::Aaaa("2001:db8::1".parse().expect("ip")), 60),
        ],
        markers: vec![marker("m1", "db1", 3), marker("m2", "db1", 3)],
    };
    let kept = steps(&desired(a(1), "db1", 3), &actual).expect("steps");
    assert_eq!(
        brief(kept),
        expect(&[delete("r1"), delete("r3"), delete("m2")])
    );
    // A wrong TTL is not a match: the record is updated.
    let ttl = Actual {
        records: vec![found("r1", a(1), 3600)],
        markers: vec![marker("m1", "db1", 3)],
    };
    let repaired = steps(&desired(a(1), "db1", 3), &ttl).expect("steps");
    assert_eq!(
        brief(repaired),
        expect(&[("r1", Some(record("A", "192.0.2.1")))])
    );
}

#[test]
fn a_cname_is_deleted_before_an_address_is_created() {
    let actual = Actual {
        records: vec![found("r1", cname("db1.internal.example."), 60)],
        markers: vec![marker("m1", "db1", 1)],
    };
    let steps = steps(&desired(a(2), "db2", 2), &actual).expect("steps");
    assert_eq!(
        brief(steps),
        expect(&[
            delete("r1"),
            ("new", Some(record("A", "192.0.2.2"))),
            ("m1", Some(marker_record("db2", 2))),
        ])
    );
}

#[test]
fn addresses_are_deleted_before_a_cname_is_created() {
    let actual = Actual {
        records: vec![
            found("r1", a(1), 60),
            found("r2", Target::Aaaa("2001:db8::1".parse().expect("ip")), 60),
        ],
        markers: Vec::new(),
    };
    let steps = steps(&desired(cname("db2.internal.example."), "db2", 2), &actual).expect("steps");
    assert_eq!(
        brief(steps),
        expect(&[
            delete("r1"),
            delete("r2"),
            ("new", Some(record("CNAME", "db2.internal.example."))),
            ("new", Some(marker_record("db2", 2))),
        ])
    );
}

#[test]
fn a_record_read_without_an_id_cannot_be_written() {
    let actual = Actual {
        records: vec![Found {
            value: a(1),
            ttl: 60,
            id: None,
        }],
        markers: Vec::new(),
    };
    assert!(matches!(
        steps(&desired(a(2), "db2", 2), &actual),
        Err(PublishError::Refused(_))
    ));
}

#[test]
fn listings_become_actual_records_and_markers() {
    let listed = |id: &str, rtype: &str, name: &str, content: &str| Listed {
        id: id.into(),
        rtype: rtype.into(),
        name: name.into(),
        content: content.into(),
        ttl: 60,
    };
    let actual = actual(
        "db.example.com.",
        &[
            listed("1", "A", "db.example.com.", "192.0.2.1"),
            listed("2", "CNAME", "db.example.com.", "Db2.Internal.Example."),
            listed("3", "MX", "db.example.com.", "mail.example.com."),
            listed("4", "A", "other.example.com.", "192.0.2.4"),
            listed("5", "A", "db.example.com.", "not-an-address"),
        ],
        &[
            listed(
                "6",
                "TXT",
                "_highlander.db.example.com.",
                "instance=db1 epoch=3",
            ),
            listed("7", "TXT", "db.example.com.", "v=spf1 -all"),
        ],
    );
    assert_eq!(
        actual.records,
        vec![
            found("1", a(1), 60),
            found("2", cname("db2.internal.example."), 60)
        ]
    );
    assert_eq!(actual.markers, vec![marker("6", "db1", 3)]);
    assert_eq!(actual.marker().map(|m| m.epoch), Some(3));
}

#[test]
fn only_plain_ids_go_into_a_url_path() {
    let api = api();
    for plain in ["28448433", "372e67954025e0ba6aaa6d586b9e0b59", "rec_1-a"] {
        assert_eq!(path_id(&api, plain).ok(), Some(plain));
    }
    for odd in [
        "",
        "../../account",
        "1/2",
        "%2e%2e",
        "..",
        "1?page=2",
        "1#x",
        "ä",
        &"9".repeat(65),
    ] {
        match path_id(&api, odd) {
            Err(PublishError::Refused(why)) => {
                assert!(why.contains("does not put in a URL"), "{why}");
                assert!(why.contains("DigitalOcean API"), "{why}");
            }
            other => panic!("{odd:?} should be refused, got {other:?}"),
        }
    }
}
