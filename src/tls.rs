//! The process's TLS crypto provider. Every TLS client in warren is rustls with ring (lapin's
//! AMQPS, sqlx, lettre, and reqwest for the HTTP subscriptions and the management API).
//! reqwest, built without aws-lc, needs a provider installed as the process default before
//! it builds a client; [`install_crypto_provider`] installs ring once, and every place that
//! builds a client calls it first.

use std::sync::Once;

/// Installs ring as the process's default rustls crypto provider, once; a provider another
/// part of the process installed first is kept.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
