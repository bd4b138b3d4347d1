//! A small real SMTP receiver for the tests: speaks enough SMTP for lettre (EHLO, MAIL, RCPT,
//! DATA, RSET, NOOP, QUIT), stores what it receives, and can be told to refuse the next
//! recipients with given reply codes.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
};

/// One received mail.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

/// The receiver.
#[derive(Clone)]
pub struct SmtpSink {
    pub addr: SocketAddr,
    mails: Arc<Mutex<Vec<Mail>>>,
    refusals: Arc<Mutex<VecDeque<u16>>>,
    refuse_all: Arc<Mutex<Option<u16>>>,
}

impl SmtpSink {
    /// Starts listening on a free port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind smtp");
        let sink = Self {
            addr: listener.local_addr().expect("addr"),
            mails: Arc::default(),
            refusals: Arc::default(),
            refuse_all: Arc::default(),
        };
        let s = sink.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = s.serve(stream).await;
                });
            }
        });
        sink
    }

    /// `smtp://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// The next recipients are refused with these codes, one each.
    pub fn refuse_next(&self, codes: &[u16]) {
        self.refusals.lock().expect("lock").extend(codes);
    }

    /// Every recipient is refused with `code` (None: accept again).
    pub fn refuse_all(&self, code: Option<u16>) {
        *self.refuse_all.lock().expect("lock") = code;
    }

    /// Mails received so far.
    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().expect("lock").clone()
    }

    async fn serve(&self, stream: tokio::net::TcpStream) -> std::io::Result<()> {
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        w.write_all(b"220 warren-test-sink ESMTP\r\n").await?;
        let mut from = String::new();
        let mut to = Vec::new();
        while let Some(line) = lines.next_line().await? {
            let upper = line.to_ascii_uppercase();
            if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                w.write_all(b"250-warren-test-sink\r\n250 8BITMIME\r\n")
                    .await?;
            } else if upper.starts_with("MAIL FROM:") {
                from = line[10..].trim().to_owned();
                to.clear();
                w.write_all(b"250 OK\r\n").await?;
            } else if upper.starts_with("RCPT TO:") {
                let refusal = self
                    .refusals
                    .lock()
                    .expect("lock")
                    .pop_front()
                    .or(*self.refuse_all.lock().expect("lock"));
                match refusal {
                    Some(code) => {
                        w.write_all(format!("{code} refused by the test sink\r\n").as_bytes())
                            .await?;
                    }
                    None => {
                        to.push(line[8..].trim().to_owned());
                        w.write_all(b"250 OK\r\n").await?;
                    }
                }
            } else if upper == "DATA" {
                w.write_all(b"354 end with .\r\n").await?;
                let mut data = String::new();
                while let Some(l) = lines.next_line().await? {
                    if l == "." {
                        break;
                    }
                    data.push_str(&l);
                    data.push('\n');
                }
                self.mails.lock().expect("lock").push(Mail {
                    from: from.clone(),
                    to: to.clone(),
                    data,
                });
                w.write_all(b"250 queued\r\n").await?;
            } else if upper.starts_with("QUIT") {
                w.write_all(b"221 bye\r\n").await?;
                return Ok(());
            } else {
                // RSET, NOOP and anything else.
                w.write_all(b"250 OK\r\n").await?;
            }
        }
        Ok(())
    }
}
