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
