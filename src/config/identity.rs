//! Who and where this process is: the user and host names the audit log and the scheduler
//! record, read once when settings load ([`Identity::detect`]).

/// The process's user and host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The login name (`USER`, else `LOGNAME`, else `unknown`).
    pub user: String,
    /// The host name (the kernel's, else `/etc/hostname`, else `localhost`).
    pub host: String,
}

impl Default for Identity {
    fn default() -> Self {
        Self {
            user: "unknown".to_owned(),
            host: "localhost".to_owned(),
        }
    }
}

impl Identity {
    /// Reads the user from the environment and the host name from the kernel.
    pub fn detect() -> Self {
        let fallback = Self::default();
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or(fallback.user);
        let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .find_map(|p| {
                let h = std::fs::read_to_string(p).ok()?;
                let h = h.trim();
                (!h.is_empty()).then(|| h.to_owned())
            })
            .unwrap_or(fallback.host);
        Self { user, host }
    }

    /// The audit log's name for a command-line user: `cli:<user>@<host>`.
    pub fn cli_actor(&self) -> String {
        format!("cli:{}@{}", self.user, self.host)
    }

    /// A name for this process among its peers: `<host>:<pid>`.
    pub fn instance(&self) -> String {
        format!("{}:{}", self.host, std::process::id())
    }
}
