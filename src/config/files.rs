//! The files settings name (`amqp.topology_file`, `saga.definitions_file`), read once when
//! settings load, so a missing or unreadable file fails the start with the settings, and
//! nothing later reads them again.

use std::path::{Path, PathBuf};

use super::{ConfigError, Settings};

/// A file a setting names, with its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedFile {
    /// The path as the setting says it.
    pub path: PathBuf,
    /// Its text when settings loaded.
    pub text: String,
}

/// The texts of the files settings name (none for a setting left unset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Files {
    /// `amqp.topology_file`.
    pub topology: Option<NamedFile>,
    /// `saga.definitions_file`.
    pub saga_definitions: Option<NamedFile>,
}

impl Files {
    /// Reads every file `settings` names.
    pub fn read(settings: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            topology: read(settings.amqp.topology_file.as_deref(), "amqp.topology_file")?,
            saga_definitions: read(
                settings.saga.definitions_file.as_deref(),
                "saga.definitions_file",
            )?,
        })
    }

    /// Whether these are the files `settings` names now.
    fn matches(&self, settings: &Settings) -> bool {
        let path = |f: &Option<NamedFile>| f.as_ref().map(|f| f.path.clone());
        path(&self.topology) == settings.amqp.topology_file
            && path(&self.saga_definitions) == settings.saga.definitions_file
    }
}

fn read(path: Option<&Path>, field: &'static str) -> Result<Option<NamedFile>, ConfigError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
        field,
        reason: format!("cannot read {}: {e}", path.display()),
    })?;
    Ok(Some(NamedFile {
        path: path.to_owned(),
        text,
    }))
}

impl Settings {
    /// The files these settings name: as read when they loaded, or, for settings built or
    /// changed in code since (a test, an embedding program), read now.
    pub fn files(&self) -> Result<Files, ConfigError> {
        if self.files.matches(self) {
            Ok(self.files.clone())
        } else {
            Files::read(self)
        }
    }
}
