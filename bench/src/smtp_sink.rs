//! `warren-bench smtp-sink`: an SMTP receiver that accepts every mail, for when there is no
//! mail server: the synchronous-mode benchmark sends real SMTP to it on localhost, and
//! `scripts/run-local.sh` runs it as the local run's mail server.
//!
//! It speaks what lettre needs (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) and counts the mail.
//! With `--maildir DIR` it writes each mail to `DIR` as an `.eml` file (the message as sent,
//! after `Return-Path` and `Delivered-To` lines for the envelope); with `--summary` it prints
//! one line per mail (from, to, subject). Without either it stores nothing, as the benchmark
//! wants.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use serde_json::json;
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

use crate::common::emit;

/// Options of `warren-bench smtp-sink`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SmtpSink {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:2525")]
    pub(crate) addr: SocketAddr,
    /// Write each mail to DIR as an .eml file (DIR is created when missing).
    #[arg(long, value_name = "DIR")]
    pub(crate) maildir: Option<PathBuf>,
    /// Print one line per mail: from, to, subject (and the file with --maildir).
    #[arg(long)]
    pub(crate) summary: bool,
}

/// One mail: the envelope (MAIL FROM, RCPT TO) and the message, dot-unstuffed, CRLF lines.
#[derive(Debug, Default)]
struct Mail {
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
}

impl Mail {
    /// The `Subject` header, unfolded; empty when there is none.
    fn subject(&self) -> String {
        let text = String::from_utf8_lossy(&self.data);
        let mut subject: Option<String> = None;
        for line in text.split("\r\n") {
            if line.is_empty() {
                break; // the end of the header section
            }
            match &mut subject {
                // A folded continuation of the subject.
                Some(s) if line.starts_with([' ', '\t']) => s.push_str(line),
                Some(_) => break,
                None => {
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("subject")
                    {
                        subject = Some(value.trim_start().to_owned());
                    }
                }
            }
        }
        subject.unwrap_or_default()
    }

    /// The `.eml` file's bytes: the envelope as trace headers, then the message.
    fn eml(&self) -> Vec<u8> {
        let mut out = format!("Return-Path: <{}>\r\n", self.from).into_bytes();
        for to in &self.to {
            out.extend_from_slice(format!("Delivered-To: {to}\r\n").as_bytes());
        }
        out.extend_from_slice(&self.data);
        out
    }
}

/// The receiver's state, shared by its sessions.
struct Sink {
    maildir: Option<PathBuf>,
    summary: bool,
    mails: AtomicU64,
}

/// The address in `MAIL FROM:<a@b> SIZE=1` or `RCPT TO:<a@b>` (what follows the colon when
/// there are no angle brackets).
fn address(command: &str) -> String {
    let rest = command.split_once(':').map_or("", |(_, r)| r);
    match (rest.find('<'), rest.find('>')) {
        (Some(open), Some(close)) if open < close => rest[open + 1..close].to_owned(),
        _ => rest.split_whitespace().next().unwrap_or("").to_owned(),
    }
}

/// Reads a DATA section up to the lone `.` line: lines end in CRLF, a leading dot that
/// stuffs a line is removed. `None` when the client hangs up first.
async fn read_data<R: AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut data = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(None);
        }
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if body == b"." {
            return Ok(Some(data));
        }
        data.extend_from_slice(body.strip_prefix(b".").unwrap_or(body));
        data.extend_from_slice(b"\r\n");
    }
}

/// Writes `bytes` to `dir/name` through a hidden temporary file and a rename, so a reader of
/// `*.eml` never sees half a mail.
async fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, &path).await?;
    Ok(path)
}

impl Sink {
    /// Counts a received mail, writes it under the maildir and prints its line, as asked.
    async fn deliver(&self, mail: &Mail) -> std::io::Result<()> {
        let n = self.mails.fetch_add(1, Ordering::Relaxed) + 1;
        let mut file = None;
        if let Some(dir) = &self.maildir {
            let name = format!(
                "{}-{}-{n:06}.eml",
                chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
                std::process::id()
            );
            file = Some(write_atomically(dir, &name, &mail.eml()).await?);
        }
        if self.summary {
            println!(
                "mail {n}: from <{}> to <{}> subject {:?}{}",
                mail.from,
                mail.to.join(">, <"),
                mail.subject(),
                file.map(|f| format!(" -> {}", f.display()))
                    .unwrap_or_default()
            );
        }
        Ok(())
    }

    /// One SMTP session: replies to each command until QUIT or the client hangs up.
    async fn session(&self, stream: TcpStream) -> std::io::Result<()> {
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        let mut line = Vec::new();
        let mut mail = Mail::default();
        w.write_all(b"220 warren-bench-sink ESMTP\r\n").await?;
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line).await? == 0 {
                return Ok(());
            }
            let command = String::from_utf8_lossy(&line);
            let command = command.trim_end_matches(['\r', '\n']);
            let verb = command
                .split([' ', ':'])
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            let reply: &[u8] = match verb.as_str() {
                "EHLO" | "HELO" => b"250-warren-bench-sink\r\n250 8BITMIME\r\n",
                "MAIL" => {
                    mail = Mail {
                        from: address(command),
                        ..Mail::default()
                    };
                    b"250 OK\r\n"
                }
                "RCPT" => {
                    mail.to.push(address(command));
                    b"250 OK\r\n"
                }
                "RSET" => {
                    mail = Mail::default();
                    b"250 OK\r\n"
                }
                "DATA" => {
                    w.write_all(b"354 end with .\r\n").await?;
                    let Some(data) = read_data(&mut r).await? else {
                        return Ok(());
                    };
                    mail.data = data;
                    let delivered = self.deliver(&mail).await;
                    mail = Mail::default();
                    match delivered {
                        Ok(()) => b"250 queued\r\n",
                        Err(e) => {
                            eprintln!("smtp sink: cannot store a mail: {e}");
                            b"451 cannot store the mail\r\n"
                        }
                    }
                }
                "QUIT" => {
                    w.write_all(b"221 bye\r\n").await?;
                    return Ok(());
                }
                _ => b"250 OK\r\n",
            };
            w.write_all(reply).await?;
        }
    }
}

/// Accepts mail until SIGTERM or Ctrl-C, then prints how many it received.
pub(crate) async fn smtp_sink(opts: SmtpSink) -> anyhow::Result<()> {
    if let Some(dir) = &opts.maildir {
        tokio::fs::create_dir_all(dir).await.map_err(|e| {
            anyhow::anyhow!("cannot create the mail directory {}: {e}", dir.display())
        })?;
    }
    let listener = TcpListener::bind(opts.addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", opts.addr))?;
    println!("smtp sink on {}", listener.local_addr()?);
    if let Some(dir) = &opts.maildir {
        println!("writing each mail to {}/*.eml", dir.display());
    }
    let sink = Arc::new(Sink {
        maildir: opts.maildir,
        summary: opts.summary,
        mails: AtomicU64::new(0),
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                let sink = sink.clone();
                tokio::spawn(async move {
                    let _ = sink.session(stream).await;
                });
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let n = sink.mails.load(Ordering::Relaxed);
    println!("received {n} mails");
    emit(&json!({"bench": "smtp_sink", "mails": n}));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_come_from_the_angle_brackets() {
        assert_eq!(
            address("MAIL FROM:<a@example.com> SIZE=10"),
            "a@example.com"
        );
        assert_eq!(address("RCPT TO: b@example.com"), "b@example.com");
        assert_eq!(address("MAIL FROM:<>"), "");
    }

    #[tokio::test]
    async fn data_ends_at_the_lone_dot_and_is_unstuffed() {
        let mut input: &[u8] = b"Subject: hi\r\n\r\n..leading dot\r\nplain\n.\r\nQUIT\r\n";
        let data = read_data(&mut input).await.expect("reads").expect("a mail");
        assert_eq!(data, b"Subject: hi\r\n\r\n.leading dot\r\nplain\r\n");
        let mut cut: &[u8] = b"Subject: hi\r\n";
        assert!(read_data(&mut cut).await.expect("reads").is_none());
    }

    #[test]
    fn the_subject_is_unfolded_and_the_eml_carries_the_envelope() {
        let mail = Mail {
            from: "warren@localhost".into(),
            to: vec!["a@example.com".into()],
            data: b"From: warren\r\nSubject: Welcome\r\n to warren\r\nTo: a\r\n\r\nSubject: no\r\n"
                .to_vec(),
        };
        assert_eq!(mail.subject(), "Welcome to warren");
        let eml = String::from_utf8(mail.eml()).expect("utf-8");
        assert!(eml.starts_with(
            "Return-Path: <warren@localhost>\r\nDelivered-To: a@example.com\r\nFrom: warren\r\n"
        ));
    }
}
