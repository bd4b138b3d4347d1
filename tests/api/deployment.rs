//! The deployment files, checked against the code: docker-compose.yml's structure, that each
//! warren `command:` parses with warren's own CLI, that each `WARREN_*` variable is a real
//! setting, that every mounted path and every `${VAR}` exists, and the Dockerfile's basics.
//! (No Docker engine runs here: this is what can be proven without one.)

use std::{collections::BTreeSet, path::Path};

use clap::Parser;
use serde_json::Value;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn compose() -> Value {
    let text = std::fs::read_to_string(repo("docker-compose.yml")).expect("docker-compose.yml");
    let mut yaml: serde_norway::Value = serde_norway::from_str(&text).expect("valid YAML");
    yaml.apply_merge().expect("merge keys resolve");
    serde_json::to_value(yaml).expect("as JSON")
}

/// `WARREN_AMQP__URL` -> does `amqp.url` exist in the settings?
fn is_setting(var: &str) -> bool {
    let Some(path) = var.strip_prefix("WARREN_") else {
        return false;
    };
    let defaults = serde_json::to_value(warren::Settings::default()).expect("settings");
    let mut node = &defaults;
    for key in path.to_ascii_lowercase().split("__") {
        match node.get(key) {
            Some(next) => node = next,
            None => return false,
        }
    }
    true
}

#[test]
fn the_compose_file_runs_every_role_in_order_with_real_commands_and_settings() {
    let c = compose();
    let services = c["services"].as_object().expect("services");
    for name in [
        "rabbitmq",
        "postgres",
        "topology",
        "serve",
        "worker",
        "saga",
        "orders",
        "inventory",
        "payments",
        "scheduler",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(name), "service {name}");
    }
    assert_eq!(
        c["services"]["worker"]["deploy"]["replicas"], 4,
        "the article's four queue workers"
    );

    let mut warren_services = 0;
    for (name, svc) in services {
        let is_warren = svc["image"] == "warren:local";
        if is_warren {
            warren_services += 1;
            let args: Vec<String> = svc["command"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}: command as a list"))
                .iter()
                .map(|a| a.as_str().expect("string arg").to_owned())
                .collect();
            let parsed = warren::cli::Cli::try_parse_from(
                std::iter::once("warren".to_owned()).chain(args.iter().cloned()),
            );
            assert!(
                parsed.is_ok(),
                "{name}: `warren {}`: {:?}",
                args.join(" "),
                parsed.err()
            );
            if let Some(modules) = args.iter().position(|a| a == "--modules") {
                for m in args[modules + 1].split(',') {
                    assert!(
                        warren::app::BUILTIN_MODULES.contains(&m),
                        "{name}: unknown module {m}"
                    );
                }
            }
            assert!(svc["restart"].is_string(), "{name}: a restart policy");
            // A one-shot (`topology apply`) exits, and others wait for its success; every
            // long-running warren service has a healthcheck.
            let one_shot = svc["restart"] == "no";
            assert!(
                one_shot || svc["healthcheck"]["test"].is_array(),
                "{name}: a healthcheck"
            );
            if let Some(env) = svc["environment"].as_object() {
                for var in env.keys().filter(|k| k.starts_with("WARREN_")) {
                    assert!(is_setting(var), "{name}: {var} is not a warren setting");
                }
            }
            // Its healthcheck is warren's own, with a CLI that parses.
            let hc: Vec<String> = svc["healthcheck"]["test"]
                .as_array()
                .into_iter()
                .flatten()
                .skip(1)
                .map(|a| a.as_str().expect("arg").to_owned())
                .collect();
            if !one_shot {
                assert_eq!(hc.first().map(String::as_str), Some("warren"), "{name}");
                assert!(
                    warren::cli::Cli::try_parse_from(hc.iter()).is_ok(),
                    "{name}: {hc:?}"
                );
            }
        }
        // Every wait for health points at a service that has a healthcheck.
        if let Some(deps) = svc["depends_on"].as_object() {
            for (dep, cond) in deps {
                let target = services
                    .get(dep)
                    .unwrap_or_else(|| panic!("{name} depends on unknown {dep}"));
                match cond["condition"].as_str() {
                    Some("service_healthy") => assert!(
                        target["healthcheck"]["test"].is_array(),
                        "{name} waits for {dep}'s health, which has no healthcheck"
                    ),
                    Some("service_completed_successfully") => {
                        assert_eq!(target["restart"], "no", "{dep} is one-shot")
                    }
                    other => panic!("{name} -> {dep}: condition {other:?}"),
                }
            }
        }
        // Every bind-mounted path exists in the repository.
        for v in svc["volumes"].as_array().into_iter().flatten() {
            let spec = v.as_str().expect("short volume syntax");
            let source = spec.split(':').next().unwrap_or_default();
            if source.starts_with("./") {
                assert!(repo(source).exists(), "{name}: {source} does not exist");
            }
        }
    }
    assert!(warren_services >= 8, "{warren_services} warren services");
    assert_eq!(
        c["services"]["serve"]["depends_on"]["topology"]["condition"],
        "service_completed_successfully"
    );
}

#[test]
fn every_variable_the_compose_file_uses_is_in_the_env_example() {
    let text = std::fs::read_to_string(repo("docker-compose.yml")).expect("compose");
    let example = std::fs::read_to_string(repo(".env.example")).expect(".env.example");
    let defined: BTreeSet<&str> = example
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    let mut used = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("${") {
        rest = &rest[i + 2..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        used.insert(name);
    }
    assert!(!used.is_empty());
    for var in &used {
        assert!(
            defined.contains(var.as_str()),
            "{var} is not in .env.example"
        );
    }
}

#[test]
fn prometheus_discovers_the_compose_services_it_scrapes() {
    let c = compose();
    let services = c["services"].as_object().expect("services");
    let text = std::fs::read_to_string(repo("prometheus/prometheus.yml")).expect("config");
    let prom: serde_norway::Value = serde_norway::from_str(&text).expect("YAML");
    let prom = serde_json::to_value(prom).expect("JSON");
    for job in prom["scrape_configs"].as_array().expect("jobs") {
        for sd in job["dns_sd_configs"].as_array().into_iter().flatten() {
            for name in sd["names"].as_array().expect("names") {
                let name = name.as_str().expect("name");
                assert!(
                    services.contains_key(name),
                    "{name} is not a compose service"
                );
            }
        }
        for sc in job["static_configs"].as_array().into_iter().flatten() {
            for t in sc["targets"].as_array().expect("targets") {
                let host = t
                    .as_str()
                    .expect("target")
                    .split(':')
                    .next()
                    .unwrap_or_default();
                assert!(
                    services.contains_key(host),
                    "{host} is not a compose service"
                );
            }
        }
    }
}

#[test]
fn the_dockerfile_builds_one_binary_runs_it_unprivileged_and_checks_its_health() {
    let d = std::fs::read_to_string(repo("Dockerfile")).expect("Dockerfile");
    let froms = d.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(froms >= 2, "multi-stage");
    assert!(d.contains("cargo build --release"), "release build");
    let user = d
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER");
    assert_ne!(user.trim(), "root");
    assert_ne!(user.trim(), "0");
    assert!(d.contains("HEALTHCHECK"), "a healthcheck");
    assert!(d.contains("\"healthcheck\""), "warren's own probe");
    assert!(warren::cli::Cli::try_parse_from(["warren", "healthcheck"]).is_ok());
}

/// Every `${...}` of `text` with its name and what follows the name (`:?message`, `:-default`,
/// or nothing).
fn interpolations(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        let escaped = rest[..i].ends_with('$');
        rest = &rest[i + 2..];
        if escaped {
            continue; // `$${...}`: a literal for the container's shell
        }
        let end = rest.find('}').expect("closed ${...}");
        let inner = &rest[..end];
        let name_len = inner
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(inner.len());
        out.push((inner[..name_len].to_owned(), inner[name_len..].to_owned()));
        rest = &rest[end + 1..];
    }
    out
}

/// Compose's interpolation of `text` from `env`, enough for this file: `${VAR}`,
/// `${VAR:?message}` (an error when VAR is unset or empty) and `${VAR:-default}`.
fn interpolate(text: &str, env: &std::collections::BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        if rest[..i].ends_with('$') {
            // `$${...}` is a literal `${...}`.
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        rest = &rest[i + 2..];
        let end = rest.find('}').expect("closed");
        let inner = &rest[..end];
        let (name, value) = if let Some((name, default)) = inner.split_once(":-") {
            let v = env.get(name).filter(|v| !v.is_empty()).cloned();
            (name, v.unwrap_or_else(|| default.to_owned()))
        } else {
            let name = inner.split(":?").next().expect("name");
            let v = env.get(name).filter(|v| !v.is_empty());
            (
                name,
                v.unwrap_or_else(|| panic!("{name} is unset or empty"))
                    .clone(),
            )
        };
        assert!(!name.is_empty());
        out.push_str(&value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn is_credential(var: &str) -> bool {
    ["USER", "PASS", "TOKEN"].iter().any(|w| var.contains(w))
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's error type, not ours
fn the_compose_stack_has_no_default_credentials() {
    let text = std::fs::read_to_string(repo("docker-compose.yml")).expect("compose");
    // Every user, password and token is required: no `${VAR}`, no `${VAR:-default}`.
    let uses = interpolations(&text);
    let credentials: Vec<_> = uses.iter().filter(|(v, _)| is_credential(v)).collect();
    assert!(credentials.len() >= 8, "{credentials:?}");
    for (var, rest) in &credentials {
        assert!(rest.starts_with(":?"), "${{{var}{rest}}} must be required");
    }
    // No well-known default credential written out.
    let lower = text.to_ascii_lowercase();
    for default in [
        "guest",
        "postgres:postgres",
        "admin:admin",
        "change-me",
        "changeme",
        "warren-local",
    ] {
        assert!(
            !lower.contains(default),
            "docker-compose.yml holds {default:?}"
        );
    }
    // The services that take credentials get them from those variables; the API has tokens.
    let c = compose();
    let env = |svc: &str, var: &str| {
        c["services"][svc]["environment"][var]
            .as_str()
            .unwrap_or_else(|| panic!("{svc}: {var} is set"))
            .to_owned()
    };
    for (svc, var) in [
        ("rabbitmq", "RABBITMQ_DEFAULT_USER"),
        ("rabbitmq", "RABBITMQ_DEFAULT_PASS"),
        ("postgres", "POSTGRES_USER"),
        ("postgres", "POSTGRES_PASSWORD"),
        ("grafana", "GF_SECURITY_ADMIN_USER"),
        ("grafana", "GF_SECURITY_ADMIN_PASSWORD"),
        ("serve", "WARREN_HTTP__TOKENS"),
    ] {
        assert!(
            env(svc, var).contains(":?"),
            "{svc}: {var} must come from a required variable"
        );
    }

    // .env.example leaves every password and token empty: nobody runs with a published one.
    let example = std::fs::read_to_string(repo(".env.example")).expect(".env.example");
    for line in example.lines().filter(|l| !l.starts_with('#')) {
        if let Some((k, v)) = line.split_once('=')
            && (k.contains("PASS") || k.contains("TOKEN"))
        {
            assert!(v.is_empty(), ".env.example sets {k}");
        }
    }

    // `scripts/run-local.sh env` fills each of them with its own random value, and leaves an
    // existing file alone.
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join(".env");
    let run = || {
        let out = std::process::Command::new("bash")
            .arg(repo("scripts/run-local.sh"))
            .arg("env")
            .arg(&file)
            .output()
            .expect("run-local.sh runs");
        assert!(out.status.success(), "{out:?}");
    };
    run();
    let parse = |text: &str| -> std::collections::BTreeMap<String, String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    };
    let first = std::fs::read_to_string(&file).expect(".env");
    let vars = parse(&first);
    let secrets: Vec<&String> = vars
        .iter()
        .filter(|(k, _)| k.contains("PASS") || k.contains("TOKEN"))
        .map(|(_, v)| v)
        .collect();
    assert!(secrets.len() >= 5, "{vars:?}");
    assert!(
        secrets
            .iter()
            .all(|s| s.len() >= 32 && s.chars().all(|c| c.is_ascii_alphanumeric()))
    );
    assert_eq!(
        secrets.iter().collect::<BTreeSet<_>>().len(),
        secrets.len(),
        "each secret is its own"
    );
    run();
    assert_eq!(
        std::fs::read_to_string(&file).expect(".env"),
        first,
        "left alone"
    );

    // With that .env the file interpolates, and the API's tokens parse as warren settings:
    // one publish+read token and one admin token.
    let resolved: serde_norway::Value =
        serde_norway::from_str(&interpolate(&text, &vars)).expect("interpolated YAML");
    let tokens = resolved["services"]["serve"]["environment"]["WARREN_HTTP__TOKENS"]
        .as_str()
        .expect("tokens")
        .to_owned();
    figment::Jail::expect_with(|jail| {
        jail.set_env("WARREN_HTTP__TOKENS", &tokens);
        let s = warren::Settings::load(None).map_err(|e| e.to_string())?;
        let got: Vec<_> = s
            .http
            .tokens
            .iter()
            .map(|t| (t.token().expose().to_owned(), t.scopes()))
            .collect();
        use warren::config::Scope::{Admin, Publish, Read};
        assert_eq!(
            got,
            vec![
                (vars["API_PUBLISH_TOKEN"].clone(), vec![Publish, Read]),
                (vars["API_ADMIN_TOKEN"].clone(), vec![Read, Admin]),
            ]
        );
        Ok(())
    });
}
