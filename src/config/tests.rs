//! Loading and validation of settings.

use std::{net::SocketAddr, time::Duration};

use super::*;

#[test]
fn secrets_never_print() {
    let s = Settings {
        http: HttpSettings {
            tokens: vec![
                TokenSetting::Plain(Secret::new("a-very-secret-token-123")),
                TokenSetting::Scoped {
                    token: Secret::new("another-secret-token-456"),
                    scopes: vec![Scope::Publish],
                    name: None,
                },
            ],
            ..HttpSettings::default()
        },
        ..Settings::default()
    };
    let printed = format!("{s:?}");
    assert!(!printed.contains("a-very-secret-token-123"));
    assert!(!printed.contains("another-secret-token-456"));
    assert!(!printed.contains("guest:guest"));
    assert!(printed.contains("[redacted]"));
}

#[test]
fn redacts_url_password() {
    assert_eq!(
        redact_url("amqp://user:pw@host:5672/%2f"),
        "amqp://user:***@host:5672/%2f"
    );
}

#[test]
fn environment_overrides_file_and_defaults() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "warren.toml",
            "[http]\naddr = \"127.0.0.1:9000\"\nbody_limit_bytes = 10\n",
        )?;
        jail.set_env("WARREN_HTTP__BODY_LIMIT_BYTES", "20");
        jail.set_env("WARREN_AMQP__PUBLISH_TIMEOUT_MS", "750");
        jail.set_env("WARREN_TEST_AMQP_URL", "ignored");
        let s =
            Settings::load(Some(std::path::Path::new("warren.toml"))).map_err(|e| e.to_string())?;
        assert_eq!(s.http.addr, SocketAddr::from(([127, 0, 0, 1], 9000)));
        assert_eq!(s.http.body_limit_bytes, 20);
        assert_eq!(s.amqp.publish_timeout(), Duration::from_millis(750));
        Ok(())
    });
}

#[test]
fn unknown_or_bad_values_are_rejected() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("WARREN_HTTP__NOPE", "1");
        assert!(Settings::load(None).is_err());
        Ok(())
    });
    figment::Jail::expect_with(|jail| {
        jail.set_env("WARREN_DATABASE__URL", "mysql://x");
        let err = Settings::load(None).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("database.url")));
        Ok(())
    });
}

#[test]
fn plain_and_scoped_tokens_load_from_toml_and_from_one_variable() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "warren.toml",
            r#"
[[http.tokens]]
token = "publisher-token-0123456789"
scopes = ["publish"]

[[http.tokens]]
token = "operator-token-0123456789"
scopes = ["admin"]
"#,
        )?;
        let s =
            Settings::load(Some(std::path::Path::new("warren.toml"))).map_err(|e| e.to_string())?;
        assert_eq!(s.http.tokens.len(), 2);
        assert_eq!(s.http.tokens[0].scopes(), vec![Scope::Publish]);
        assert_eq!(s.http.tokens[1].scopes(), vec![Scope::Read, Scope::Admin]);
        Ok(())
    });
    figment::Jail::expect_with(|jail| {
        jail.set_env(
            "WARREN_HTTP__TOKENS",
            r#"["plain-token-0123456789", {token="reader-token-0123456789", scopes=["read"]}]"#,
        );
        let s = Settings::load(None).map_err(|e| e.to_string())?;
        assert_eq!(
            s.http.tokens[0],
            TokenSetting::Plain(Secret::new("plain-token-0123456789"))
        );
        assert_eq!(
            s.http.tokens[0].scopes(),
            vec![Scope::Publish, Scope::Read, Scope::Admin]
        );
        assert_eq!(s.http.tokens[1].scopes(), vec![Scope::Read]);
        assert_eq!(s.http.tokens[1].token().expose(), "reader-token-0123456789");
        Ok(())
    });
}

#[test]
fn bad_tokens_and_limits_are_refused() {
    let with = |f: &dyn Fn(&mut Settings)| {
        let mut s = Settings::default();
        f(&mut s);
        s.validate().err().map(|e| e.to_string())
    };
    let scoped = |t: &str, scopes: Vec<Scope>| TokenSetting::Scoped {
        token: Secret::new(t),
        scopes,
        name: None,
    };
    assert!(
        with(&|s| s.http.tokens = vec![scoped("long-enough-token-123", vec![])])
            .is_some_and(|e| e.contains("at least one scope"))
    );
    assert!(
        with(&|s| s.http.tokens = vec![scoped("short", vec![Scope::Read])])
            .is_some_and(|e| e.contains("16 characters"))
    );
    assert!(
        with(&|s| {
            s.http.tokens = vec![
                scoped("long-enough-token-123", vec![Scope::Read]),
                TokenSetting::Plain(Secret::new("long-enough-token-123")),
            ]
        })
        .is_some_and(|e| e.contains("twice"))
    );
    assert!(
        with(&|s| s.http.rate_limit_burst = 5).is_some_and(|e| e.contains("rate_limit_per_sec"))
    );
    assert!(
        with(&|s| s.amqp.tls_ca_file = Some("/ca.pem".into()))
            .is_some_and(|e| e.contains("amqps://"))
    );
    assert!(
        with(&|s| {
            s.amqp.url = Secret::new("amqps://u:p@h/%2f");
            s.amqp.tls_client_cert_file = Some("/c.pem".into());
        })
        .is_some_and(|e| e.contains("tls_client_key_file"))
    );
    assert!(
        with(&|s| {
            s.amqp.url = Secret::new("amqps://u:p@h/%2f");
            s.amqp.tls_ca_file = Some("/ca.pem".into());
        })
        .is_none()
    );
}

#[test]
fn heartbeat_is_added_once() {
    let mut s = Settings::default();
    assert!(s.amqp_uri().ends_with("?heartbeat=10"));
    s.amqp.url = Secret::new("amqp://h/%2f?heartbeat=5");
    assert_eq!(s.amqp_uri(), "amqp://h/%2f?heartbeat=5");
}

const SUB_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const SUB_SECRET_2: &str = "whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGQ";

#[test]
fn subscriptions_load_from_toml_with_their_defaults() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "warren.toml",
            &format!(
                r##"
[jobs]
max_attempts = 4

[[subscriptions]]
name = "billing"
events = ["order.*", "user.registered"]
commands = ["invoice.render"]
url = "http://billing.internal:8080/hooks/warren?v=1"
timeout_ms = 2500
concurrency = 4
max_attempts = 9
secret = "{SUB_SECRET}"
secrets = ["{SUB_SECRET_2}"]
content_mode = "structured"
ordering = "aggregate"
max_retry_after_secs = 30
max_response_bytes = 100
headers = {{ authorization = "Bearer billing-token-xyz", x-tenant = "acme" }}
breaker = {{ failures = 3, cooldown_ms = 500, max_cooldown_ms = 8000 }}

[[subscriptions]]
name = "audit-mirror"
events = ["#"]
url = "http://127.0.0.1:9000/"
"##
            ),
        )?;
        let s =
            Settings::load(Some(std::path::Path::new("warren.toml"))).map_err(|e| e.to_string())?;
        let [billing, mirror] = s.subscriptions.as_slice() else {
            panic!("two subscriptions: {:?}", s.subscriptions);
        };
        assert_eq!(billing.queue(), "warren.sub.billing");
        assert_eq!(billing.dead_queue(), "warren.sub.billing.dead");
        assert_eq!(billing.commands, ["invoice.render"]);
        assert_eq!(billing.timeout(), Duration::from_millis(2_500));
        assert_eq!(billing.concurrency, 4);
        assert_eq!(billing.max_attempts, Some(9));
        assert_eq!(billing.content_mode, ContentMode::Structured);
        assert_eq!(
            billing.ordering,
            Ordering::Aggregate,
            "accepted since the ordering step"
        );
        assert_eq!(billing.breaker.failures, 3);
        assert_eq!(billing.breaker.max_cooldown_ms, 8_000);
        assert_eq!(billing.headers["x-tenant"].expose(), "acme");
        let keys = billing.signing_keys()?;
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1], (1..=25).collect::<Vec<u8>>());

        assert_eq!(mirror.events, ["#"]);
        assert!(mirror.commands.is_empty());
        assert_eq!(mirror.timeout_ms, 10_000);
        assert_eq!(mirror.concurrency, 16);
        assert_eq!(mirror.max_attempts, None, "falls back to jobs.max_attempts");
        assert!(mirror.headers.is_empty() && mirror.secret.is_none() && mirror.secrets.is_empty());
        assert_eq!(mirror.content_mode, ContentMode::Binary);
        assert_eq!(mirror.ordering, Ordering::None);
        assert_eq!(mirror.breaker, BreakerSettings::default());
        assert_eq!(
            (
                mirror.breaker.failures,
                mirror.breaker.cooldown_ms,
                mirror.breaker.max_cooldown_ms
            ),
            (5, 1_000, 60_000)
        );
        assert_eq!(mirror.max_retry_after_secs, 300);
        assert_eq!(mirror.max_response_bytes, 4_096);
        assert!(Settings::default().subscriptions.is_empty());
        Ok(())
    });
}

#[test]
fn subscription_secrets_and_headers_never_print() {
    let mut sub = SubscriptionSettings::new("billing", "http://h/x");
    sub.events = vec!["#".into()];
    sub.secret = Some(Secret::new(SUB_SECRET));
    sub.secrets = vec![Secret::new(SUB_SECRET_2)];
    sub.headers.insert(
        "authorization".into(),
        Secret::new("Bearer billing-token-xyz"),
    );
    let s = Settings {
        subscriptions: vec![sub],
        ..Settings::default()
    };
    // `warren config` prints `serde_json::to_value(settings)` (then redacts URLs and tokens).
    let shown =
        serde_json::to_string(&serde_json::to_value(&s).expect("serializes")).expect("json");
    let debug = format!("{s:?}");
    for printed in [&shown, &debug] {
        for secret in ["C2FVsBQIhrscChlQIMV", "AQIDBAUGBwgJCg", "billing-token-xyz"] {
            assert!(!printed.contains(secret), "{secret} printed: {printed}");
        }
    }
    assert!(shown.contains(r#""authorization":"[redacted]""#), "{shown}");
    assert!(shown.contains(r#""secret":"[redacted]""#), "{shown}");
    assert!(shown.contains(r#""secrets":["[redacted]"]"#), "{shown}");
    assert!(shown.contains(r#""url":"http://h/x""#), "{shown}");
}

#[test]
fn bad_subscriptions_are_refused_naming_the_subscription_and_field() {
    let with = |f: &dyn Fn(&mut SubscriptionSettings)| {
        let mut sub = SubscriptionSettings::new("billing", "http://billing.internal/hook");
        sub.events = vec!["order.*".into()];
        f(&mut sub);
        let s = Settings {
            subscriptions: vec![sub],
            ..Settings::default()
        };
        s.validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert_eq!(with(&|_| {}), "", "the base subscription is valid");
    type Change<'a> = &'a dyn Fn(&mut SubscriptionSettings);
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "subscriptions.name",
            &|s| s.name = "Billing".into(),
            "a-z, 0-9",
        ),
        ("subscriptions.name", &|s| s.name = String::new(), "1 to 64"),
        (
            "subscriptions.name",
            &|s| s.name = "a".repeat(65),
            "1 to 64",
        ),
        ("subscriptions.name", &|s| s.name = "a.b".into(), "a-z"),
        (
            "subscriptions.events",
            &|s| s.events.clear(),
            "at least one pattern",
        ),
        (
            "subscriptions.events",
            &|s| s.events = vec!["Order.*".into()],
            "binding pattern",
        ),
        (
            "subscriptions.events",
            &|s| s.events = vec!["order..x".into()],
            "binding pattern",
        ),
        (
            "subscriptions.commands",
            &|s| s.commands = vec!["".into()],
            "binding pattern",
        ),
        (
            "subscriptions.url",
            &|s| s.url = "billing/hook".into(),
            "not a URL",
        ),
        (
            "subscriptions.url",
            &|s| s.url = "ftp://h/x".into(),
            "http://",
        ),
        (
            "subscriptions.url",
            &|s| s.url = "http://u:p@h/x".into(),
            "credentials",
        ),
        (
            "subscriptions.url",
            &|s| s.url = "http://u@h/x".into(),
            "credentials",
        ),
        (
            "subscriptions.url",
            &|s| s.url = "http://h/x#frag".into(),
            "fragment",
        ),
        (
            "subscriptions.tls_ca_file",
            &|s| s.tls_ca_file = Some("/ca.pem".into()),
            "not https://",
        ),
        (
            "subscriptions.tls_client_cert_file",
            &|s| {
                s.url = "https://h/x".into();
                s.tls_client_cert_file = Some("/client.pem".into());
            },
            "set both",
        ),
        (
            "subscriptions.timeout_ms",
            &|s| s.timeout_ms = 0,
            "at least 1",
        ),
        (
            "subscriptions.concurrency",
            &|s| s.concurrency = 0,
            "at least 1",
        ),
        (
            "subscriptions.max_attempts",
            &|s| s.max_attempts = Some(0),
            "at least 1",
        ),
        (
            "subscriptions.secret",
            &|s| s.secret = Some(Secret::new("plain-secret-value")),
            "whsec_",
        ),
        (
            "subscriptions.secret",
            &|s| s.secret = Some(Secret::new("whsec_c2hvcnQ=")),
            "24 to 64",
        ),
        (
            "subscriptions.secrets",
            &|s| s.secrets = vec![Secret::new("whsec_???")],
            "base64",
        ),
        (
            "subscriptions.secrets",
            &|s| {
                s.secret = Some(Secret::new(SUB_SECRET));
                s.secrets = vec![Secret::new(SUB_SECRET)];
            },
            "twice",
        ),
        (
            "subscriptions.breaker",
            &|s| s.breaker.failures = 0,
            "at least 1",
        ),
        (
            "subscriptions.breaker",
            &|s| s.breaker.max_cooldown_ms = 10,
            "at least breaker.cooldown_ms",
        ),
        (
            "subscriptions.max_response_bytes",
            &|s| s.max_response_bytes = 2 << 20,
            "1 MiB",
        ),
    ];
    for header in [
        "Connection",
        "transfer-encoding",
        "host",
        "content-type",
        "ce-id",
        "CE-Type",
        "webhook-signature",
        "traceparent",
        "warren-attempt",
        "Idempotency-Key",
        "warren-saga-step",
    ] {
        let e = with(&|s| {
            s.headers.insert(header.into(), Secret::new("x"));
        });
        assert!(
            e.contains("subscriptions.headers") && e.contains(r#"subscription "billing""#),
            "{header}: {e}"
        );
    }
    assert!(
        with(&|s| {
            s.headers.insert("bad header".into(), Secret::new("x"));
        })
        .contains("not a header name")
    );
    assert!(
        with(&|s| {
            s.headers.insert("x-ok".into(), Secret::new("line\nbreak"));
        })
        .contains("not a valid header value")
    );
    for (field, change, reason) in cases {
        let e = with(change);
        assert!(
            e.contains(&format!("`{field}`"))
                && e.contains(r#"subscription ""#)
                && (field == "subscriptions.name" || e.contains(r#"subscription "billing""#))
                && e.contains(reason),
            "want {field} / {reason}, got: {e}"
        );
        assert!(!e.contains(SUB_SECRET), "the secret is not repeated: {e}");
    }

    // Names are unique; the other checks still run on the second one.
    let mut a = SubscriptionSettings::new("billing", "http://h/a");
    a.events = vec!["#".into()];
    let s = Settings {
        subscriptions: vec![a.clone(), a],
        ..Settings::default()
    };
    let e = s
        .validate()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("used twice"), "{e}");
}

#[test]
fn node_lists_load_from_toml_from_a_comma_separated_variable_and_from_a_list_variable() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "warren.toml",
            r#"
[amqp]
urls = ["amqp://g:g@n1:5672/shop", "amqp://g:g@n2:5672/shop"]
management_urls = ["http://g:g@n1:15672", "http://g:g@n2:15672"]
"#,
        )?;
        let s =
            Settings::load(Some(std::path::Path::new("warren.toml"))).map_err(|e| e.to_string())?;
        assert_eq!(
            s.amqp.node_urls(),
            vec!["amqp://g:g@n1:5672/shop", "amqp://g:g@n2:5672/shop"]
        );
        assert_eq!(s.amqp.vhost(), "shop");
        assert_eq!(s.amqp.management_node_urls().len(), 2);
        assert_eq!(
            s.amqp_uris(),
            vec![
                "amqp://g:g@n1:5672/shop?heartbeat=10",
                "amqp://g:g@n2:5672/shop?heartbeat=10"
            ]
        );
        Ok(())
    });
    figment::Jail::expect_with(|jail| {
        jail.set_env(
            "WARREN_AMQP__URLS",
            "amqp://g:g@n1:5672/%2f, amqp://g:g@n2:5672/%2f,amqp://g:g@n3:5672/%2f",
        );
        let s = Settings::load(None).map_err(|e| e.to_string())?;
        assert_eq!(s.amqp.node_urls().len(), 3);
        assert_eq!(s.amqp.node_urls()[1], "amqp://g:g@n2:5672/%2f");
        assert_eq!(s.amqp.vhost(), "/");
        // The one-node form is what the management API falls back to.
        assert_eq!(
            s.amqp.management_node_urls(),
            vec!["http://guest:guest@127.0.0.1:15672"]
        );
        Ok(())
    });
    figment::Jail::expect_with(|jail| {
        jail.set_env(
            "WARREN_AMQP__URLS",
            r#"["amqp://g:g@n1:5672/v", "amqp://g:g@n2:5672/v"]"#,
        );
        let s = Settings::load(None).map_err(|e| e.to_string())?;
        assert_eq!(s.amqp.node_urls().len(), 2);
        Ok(())
    });
}

#[test]
fn without_urls_the_one_url_is_the_only_node() {
    let s = Settings::default();
    assert_eq!(s.amqp.node_urls(), vec![s.amqp.url.expose()]);
    assert_eq!(s.amqp.primary_url(), s.amqp.url.expose());
    assert_eq!(s.amqp_uris(), vec![s.amqp_uri()]);
}

#[test]
fn nodes_of_different_vhosts_or_schemes_are_refused() {
    let mut s = Settings::default();
    s.amqp.urls = vec![
        Secret::new("amqp://g:g@n1:5672/shop"),
        Secret::new("amqp://g:g@n2:5672/other"),
    ];
    let err = s.validate().expect_err("two vhosts").to_string();
    assert!(
        err.contains("amqp.urls") && err.contains("same vhost"),
        "{err}"
    );
    s.amqp.urls = vec![
        Secret::new("amqp://g:g@n1:5672/shop"),
        Secret::new("http://n2:5672/shop"),
    ];
    let err = s.validate().expect_err("not amqp").to_string();
    assert!(err.contains("amqp.urls"), "{err}");
    s.amqp.urls = vec![Secret::new("amqp://g:g@n1:5672/shop")];
    s.amqp.management_urls = vec![Secret::new("ftp://n1")];
    let err = s.validate().expect_err("not http").to_string();
    assert!(err.contains("amqp.management_urls"), "{err}");
    s.amqp.management_urls = vec![];
    s.validate().expect("one node in the list is fine");
}
