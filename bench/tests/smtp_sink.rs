//! `warren-bench smtp-sink --maildir DIR --summary` end to end: the binary is started on a
//! free port, lettre (the client warren's e-mail module uses) sends it a mail, and the test
//! reads the `.eml` file back, the summary line, and the count printed on SIGTERM.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// The sink process; killed when dropped (also when an assertion fails).
struct Sink {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sink {
    fn start(maildir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_warren-bench"))
            .args([
                "smtp-sink",
                "--addr",
                "127.0.0.1:0",
                "--summary",
                "--maildir",
            ])
            .arg(maildir)
            .env_remove("WARREN_CONFIG")
            .env("WARREN_LOG__FILTER", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start warren-bench smtp-sink");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The next stdout line that starts with `prefix` (others are skipped), within 30 s.
    fn line_starting(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no line starting {prefix:?} from the sink: {e}"));
            if line.starts_with(prefix) {
                return line;
            }
        }
    }
}

/// The `.eml` files in `dir`, waiting (up to 10 s) until there is at least one.
fn eml_files(dir: &Path) -> Vec<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let files: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("read the maildir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        if !files.is_empty() {
            return files;
        }
        assert!(
            Instant::now() < deadline,
            "no .eml file in {dir:?} after 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn a_mail_sent_with_lettre_lands_as_an_eml_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let maildir = dir.path().join("local-mail");
    let sink = Sink::start(&maildir);
    let addr: std::net::SocketAddr = sink
        .line_starting("smtp sink on ")
        .trim_start_matches("smtp sink on ")
        .parse()
        .expect("the sink prints its address");

    let mail = Message::builder()
        .from("warren <warren@localhost>".parse().expect("from"))
        .to("Ada <ada@example.com>".parse().expect("to"))
        .subject("Welcome, Ada")
        .body("Hello Ada.\n.A line that starts with a dot.\n".to_owned())
        .expect("a message");
    let smtp = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .build();
    smtp.send(mail).await.expect("the sink accepts the mail");

    let files = eml_files(&maildir);
    assert_eq!(files.len(), 1, "one file per mail: {files:?}");
    let eml = std::fs::read_to_string(&files[0]).expect("read the .eml");
    assert!(
        eml.starts_with("Return-Path: <warren@localhost>\r\nDelivered-To: ada@example.com\r\n")
    );
    assert!(eml.contains("\r\nSubject: Welcome, Ada\r\n"), "{eml}");
    assert!(
        eml.contains("\r\nFrom: warren <warren@localhost>\r\n"),
        "{eml}"
    );
    assert!(eml.contains("\r\nTo: Ada <ada@example.com>\r\n"), "{eml}");
    assert!(
        eml.contains("\r\n\r\nHello Ada.\r\n.A line that starts with a dot.\r\n"),
        "{eml}"
    );

    let summary = sink.line_starting("mail 1:");
    assert!(
        summary.contains("from <warren@localhost> to <ada@example.com> subject \"Welcome, Ada\""),
        "{summary}"
    );
    assert!(
        summary.ends_with(&format!(" -> {}", files[0].display())),
        "{summary}"
    );

    // SIGTERM: the sink stops and reports its count for the benchmark suite.
    let pid = sink.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    assert_eq!(
        sink.line_starting("BENCH "),
        r#"BENCH {"bench":"smtp_sink","mails":1}"#
    );
}
