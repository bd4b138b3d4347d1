//! `warren bench smtp-sink`: an SMTP receiver that accepts every mail and counts it, so the
//! synchronous-mode benchmark sends real SMTP on localhost without a mail server to install.
//! It speaks what lettre needs (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) and stores nothing.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

use super::emit;

/// Options of `warren bench smtp-sink`.
#[derive(Debug, Clone, clap::Args)]
pub struct SmtpSink {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:2525")]
    pub addr: SocketAddr,
}

async fn session(stream: TcpStream, mails: &AtomicU64) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    w.write_all(b"220 warren-bench-sink ESMTP\r\n").await?;
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            w.write_all(b"250-warren-bench-sink\r\n250 8BITMIME\r\n")
                .await?;
        } else if upper == "DATA" {
            w.write_all(b"354 end with .\r\n").await?;
            while let Some(l) = lines.next_line().await? {
                if l == "." {
                    break;
                }
            }
            mails.fetch_add(1, Ordering::Relaxed);
            w.write_all(b"250 queued\r\n").await?;
        } else if upper.starts_with("QUIT") {
            w.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            w.write_all(b"250 OK\r\n").await?;
        }
    }
    Ok(())
}

/// Accepts mail until SIGTERM or Ctrl-C, then prints how many it received.
pub async fn smtp_sink(opts: SmtpSink) -> anyhow::Result<()> {
    let listener = TcpListener::bind(opts.addr).await?;
    println!("smtp sink on {}", listener.local_addr()?);
    let mails = Arc::new(AtomicU64::new(0));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                let mails = mails.clone();
                tokio::spawn(async move {
                    let _ = session(stream, &mails).await;
                });
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let n = mails.load(Ordering::Relaxed);
    println!("received {n} mails");
    emit(&json!({"bench": "smtp_sink", "mails": n}));
    Ok(())
}
